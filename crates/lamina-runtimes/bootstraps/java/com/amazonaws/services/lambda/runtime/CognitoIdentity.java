// Lamina's own source of an aws-lambda-java-core interface: same package, names and
// signatures, so that code compiled against aws-lambda-java-core links against it.
package com.amazonaws.services.lambda.runtime;

/** The Amazon Cognito identity that invoked the function, if any. */
public interface CognitoIdentity {
    String getIdentityId();

    String getIdentityPoolId();
}
