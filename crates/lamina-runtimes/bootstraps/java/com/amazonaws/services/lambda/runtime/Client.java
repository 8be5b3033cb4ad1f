// Lamina's own source of an aws-lambda-java-core interface: same package, names and
// signatures, so that code compiled against aws-lambda-java-core links against it.
package com.amazonaws.services.lambda.runtime;

/** The client application of a client context. */
public interface Client {
    String getInstallationId();

    String getAppTitle();

    String getAppVersionName();

    String getAppVersionCode();

    String getAppPackageName();
}
