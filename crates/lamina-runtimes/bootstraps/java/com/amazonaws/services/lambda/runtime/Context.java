// Lamina's own source of an aws-lambda-java-core interface: same package, names and
// signatures, so that code compiled against aws-lambda-java-core links against it.
package com.amazonaws.services.lambda.runtime;

/** The invocation's context, as aws-lambda-java-core declares it. */
public interface Context {
    String getAwsRequestId();

    String getLogGroupName();

    String getLogStreamName();

    String getFunctionName();

    String getFunctionVersion();

    String getInvokedFunctionArn();

    CognitoIdentity getIdentity();

    ClientContext getClientContext();

    int getRemainingTimeInMillis();

    int getMemoryLimitInMB();

    LambdaLogger getLogger();

    default String getTenantId() {
        return null;
    }

    default String getXrayTraceId() {
        return null;
    }
}
