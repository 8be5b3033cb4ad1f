// Lamina's own source of an aws-lambda-java-core interface: same package, names and
// signatures, so that code compiled against aws-lambda-java-core links against it.
package com.amazonaws.services.lambda.runtime;

/** A handler whose input is deserialised from JSON and whose output is serialised to it. */
public interface RequestHandler<I, O> {
    O handleRequest(I input, Context context);
}
