// Lamina's own source of an aws-lambda-java-core interface: same package, names and
// signatures, so that code compiled against aws-lambda-java-core links against it.
package com.amazonaws.services.lambda.runtime.logging;

/** Log levels of LambdaLogger.log(message, level). */
public enum LogLevel {
    UNDEFINED,
    TRACE,
    DEBUG,
    INFO,
    WARN,
    ERROR,
    FATAL;

    public static LogLevel fromString(String logLevel) {
        try {
            return LogLevel.valueOf(logLevel.toUpperCase());
        } catch (Exception e) {
            throw new IllegalArgumentException(
                    "Invalid log level: '" + logLevel + "' expected one of [TRACE, DEBUG, INFO, WARN, ERROR, FATAL]");
        }
    }
}
