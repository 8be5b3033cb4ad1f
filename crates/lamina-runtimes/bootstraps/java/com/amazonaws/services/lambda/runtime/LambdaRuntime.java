// Lamina's own source of an aws-lambda-java-core interface: same package, names and
// signatures, so that code compiled against aws-lambda-java-core links against it.
package com.amazonaws.services.lambda.runtime;

import java.io.IOException;

/** The runtime's logger, for code that has no Context at hand. Lamina's runtime sets it. */
public final class LambdaRuntime {
    private LambdaRuntime() {}

    private static volatile LambdaLogger logger =
            new LambdaLogger() {
                public void log(String message) {
                    System.out.print(message);
                }

                public void log(byte[] message) {
                    try {
                        System.out.write(message);
                    } catch (IOException e) {
                        e.printStackTrace();
                    }
                }
            };

    public static LambdaLogger getLogger() {
        return logger;
    }
}
