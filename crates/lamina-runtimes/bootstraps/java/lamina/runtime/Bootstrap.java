package lamina.runtime;

import com.amazonaws.services.lambda.runtime.Client;
import com.amazonaws.services.lambda.runtime.ClientContext;
import com.amazonaws.services.lambda.runtime.CognitoIdentity;
import com.amazonaws.services.lambda.runtime.Context;
import com.amazonaws.services.lambda.runtime.LambdaLogger;
import com.amazonaws.services.lambda.runtime.LambdaRuntime;
import com.amazonaws.services.lambda.runtime.RequestHandler;
import com.amazonaws.services.lambda.runtime.RequestStreamHandler;
import com.amazonaws.services.lambda.runtime.logging.LogLevel;
import java.io.BufferedInputStream;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.PrintStream;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.lang.reflect.Constructor;
import java.lang.reflect.Field;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.lang.reflect.Type;
import java.net.Socket;
import java.net.URL;
import java.net.URLClassLoader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * Lamina's runtime for Java functions: the loop between the Lambda Runtime API and the
 * function's handler, behaving as AWS's aws-lambda-java-runtime-interface-client does.
 *
 * <p>Lamina starts it as {@code /var/lang/bin/java [heap and JIT flags] -cp
 * /var/runtime/classes lamina.runtime.Bootstrap} in the task root. The function's classes
 * are loaded by a class loader of their own over the task root, its {@code lib/*.jar} and
 * {@code /opt/java/lib/*.jar} (and, a Lamina allowance, jars at the task root), whose
 * parent holds Lamina's copy of the aws-lambda-java-core interfaces.
 *
 * <ul>
 *   <li>{@code package.Class} runs a RequestHandler or RequestStreamHandler;
 *       {@code package.Class::method} a public method of the signatures the official
 *       client accepts: {@code ()}, {@code (Input)}, {@code (Input, Context)},
 *       {@code (Context)}, {@code (InputStream, OutputStream[, Context])}.
 *   <li>a class that cannot be found, an invalid handler or a method that does not fit
 *       fail each invocation, as the official client does ("Class not found: X",
 *       java.lang.ClassNotFoundException); a class whose initialiser or constructor throws
 *       fails the init ({@code /runtime/init/error}, exit 1).
 *   <li>errors answer {"errorMessage","errorType","stackTrace"} with the runtime's own
 *       frames cut, and are logged as "message: type" followed by the stack trace.
 * </ul>
 *
 * <p>It speaks HTTP/1.1 to the Runtime API over one keep-alive socket by hand: the JDK's
 * HTTP clients cost tens of milliseconds of class loading at a cold start.
 */
public final class Bootstrap {
    private static final String RUNTIME_PACKAGE = "lamina.runtime.";

    private Bootstrap() {}

    /** A failure the official client reports without a stack trace (its UserFault). */
    static final class UserFault extends RuntimeException {
        private static final long serialVersionUID = 1L;
        final String exception;
        final String trace;
        final boolean fatal;

        UserFault(String message, String exception, String trace, boolean fatal) {
            super(message);
            this.exception = exception;
            this.trace = trace;
            this.fatal = fatal;
        }

        static UserFault of(String message) {
            return new UserFault(message, null, null, false);
        }

        static UserFault of(Throwable t, boolean fatal) {
            String message = t.getLocalizedMessage() == null ? t.getClass().getName() : t.getLocalizedMessage();
            return new UserFault(message, t.getClass().getName(), trace(t), fatal);
        }

        /** What the log shows, in the official client's words. */
        String reportable() {
            if (exception != null || trace != null) {
                return String.format(
                        "%s: %s\n%s\n", getMessage(), exception == null ? "" : exception, trace == null ? "" : trace);
            }
            return getMessage() + "\n";
        }

        String document() {
            Map<String, Object> error = new LinkedHashMap<>();
            error.put("errorMessage", getMessage());
            if (exception != null) {
                error.put("errorType", exception);
            }
            return Json.write(error);
        }
    }

    /** One way of calling the function with an event. */
    interface Invoker {
        byte[] call(byte[] event, Context context) throws Throwable;
    }

    // ------------------------------------------------------------------------------------
    // Start-up.

    public static void main(String[] args) throws Exception {
        String handler = args.length > 0 ? args[0] : System.getenv("_HANDLER");
        if (handler == null) {
            handler = "";
        }
        RuntimeApi api = new RuntimeApi(System.getenv("AWS_LAMBDA_RUNTIME_API"));
        Logger logger = new Logger(System.getenv("AWS_LAMBDA_LOG_FORMAT"), System.getenv("AWS_LAMBDA_LOG_LEVEL"));
        installRuntimeLogger(logger);

        String taskRoot = System.getProperty("user.dir");
        ClassLoader loader = customerClassLoader(taskRoot, "/opt/java");
        Thread.currentThread().setContextClassLoader(loader);

        Invoker invoker;
        try {
            invoker = findHandler(handler, loader);
        } catch (UserFault fault) {
            logger.logError(fault.reportable());
            api.initError(fault.document(), "Runtime.BadFunctionCode");
            System.exit(1);
            return;
        }
        loop(api, invoker, logger);
    }

    private static void installRuntimeLogger(LambdaLogger logger) {
        try {
            Field field = LambdaRuntime.class.getDeclaredField("logger");
            field.setAccessible(true);
            field.set(null, logger);
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException("cannot set LambdaRuntime's logger", e);
        }
    }

    private static ClassLoader customerClassLoader(String taskRoot, String optRoot) throws IOException {
        List<URL> urls = new ArrayList<>();
        File task = new File(taskRoot);
        urls.add(new File(task, "").toURI().toURL());
        appendJars(task, urls);
        appendJars(new File(task, "lib"), urls);
        appendJars(new File(optRoot, "lib"), urls);
        return new URLClassLoader(urls.toArray(new URL[0]), ClassLoader.getSystemClassLoader());
    }

    private static void appendJars(File dir, List<URL> urls) throws IOException {
        String[] names = dir.list((d, name) -> name.length() > 4 && name.endsWith(".jar"));
        if (names == null) {
            return;
        }
        Arrays.sort(names);
        for (String name : names) {
            urls.add(new File(dir, name).toURI().toURL());
        }
    }

    // ------------------------------------------------------------------------------------
    // Finding the handler, as the official client's HandlerInfo and EventHandlerLoader do.

    static Invoker findHandler(String handler, ClassLoader loader) {
        int colon = handler.lastIndexOf("::");
        String className = colon < 0 ? handler : handler.substring(0, colon);
        String methodName = colon < 0 ? null : handler.substring(colon + 2);
        if (className.isEmpty() || (methodName != null && methodName.isEmpty())) {
            return failing(UserFault.of("Invalid handler: `" + handler + "'"));
        }
        Class<?> clazz;
        try {
            clazz = Class.forName(className, true, loader);
        } catch (ClassNotFoundException e) {
            return failing(new UserFault(
                    "Class not found: " + className, e.getClass().getName(), trace(e), false));
        } catch (NoClassDefFoundError e) {
            return failing(initFault(e, className, false));
        } catch (Throwable t) {
            throw initFault(t, className, true);
        }
        if (methodName == null) {
            if (RequestStreamHandler.class.isAssignableFrom(clazz)) {
                RequestStreamHandler instance = (RequestStreamHandler) instantiate(clazz);
                return (event, context) -> {
                    ByteArrayOutputStream output = new ByteArrayOutputStream();
                    instance.handleRequest(new ByteArrayInputStream(event), output, context);
                    return output.toByteArray();
                };
            }
            if (RequestHandler.class.isAssignableFrom(clazz)) {
                @SuppressWarnings("unchecked")
                RequestHandler<Object, Object> instance = (RequestHandler<Object, Object>) instantiate(clazz);
                Type input = requestHandlerInput(clazz);
                return (event, context) -> {
                    Object in = parseInput(event, input);
                    return serialize(instance.handleRequest(in, context));
                };
            }
            return failing(UserFault.of(
                    "Class does not implement an appropriate handler interface: " + clazz.getName()));
        }
        return pojoHandler(clazz, methodName);
    }

    private static UserFault initFault(Throwable t, String className, boolean fatal) {
        return new UserFault(
                "Error loading class " + className + (t.getMessage() == null ? "" : ": " + t.getMessage()),
                t.getClass().getName(),
                trace(t),
                fatal);
    }

    private static Invoker failing(UserFault fault) {
        return (event, context) -> {
            throw fault;
        };
    }

    private static Object instantiate(Class<?> clazz) {
        try {
            if (clazz.getEnclosingClass() != null && !Modifier.isStatic(clazz.getModifiers())) {
                throw new Exception("Class " + clazz.getName()
                        + " cannot be instantiated because it is a non-static inner class");
            }
            Constructor<?> constructor;
            try {
                constructor = clazz.getConstructor();
            } catch (NoSuchMethodException e) {
                throw new Exception("Class " + clazz.getName() + " has no public zero-argument constructor", e);
            }
            return constructor.newInstance();
        } catch (InvocationTargetException e) {
            Throwable cause = e.getCause() == null ? e : e.getCause();
            throw UserFault.of(filter(cause), true);
        } catch (Exception e) {
            throw UserFault.of(filter(e), true);
        }
    }

    /** The input type of the class's handleRequest(I, Context), from its real (non-bridge) method. */
    private static Type requestHandlerInput(Class<?> clazz) {
        for (Method m : clazz.getMethods()) {
            if (m.getName().equals("handleRequest") && !m.isBridge() && m.getParameterCount() == 2
                    && m.getParameterTypes()[1] == Context.class) {
                return m.getGenericParameterTypes()[0];
            }
        }
        return Object.class;
    }

    private static Invoker pojoHandler(Class<?> clazz, String methodName) {
        List<Method> candidates = new ArrayList<>();
        try {
            for (Method m : clazz.getMethods()) {
                if (m.getName().equals(methodName) && !m.isBridge()) {
                    candidates.add(m);
                }
            }
        } catch (NoClassDefFoundError e) {
            return failing(new UserFault(
                    "Error loading method " + methodName + " on class " + clazz.getName(),
                    e.getClass().getName(),
                    trace(e),
                    false));
        }
        // Longer signatures first; of equal length, the one ending with a Context.
        candidates.sort((a, b) -> {
            int byLength = Integer.compare(b.getParameterCount(), a.getParameterCount());
            if (byLength != 0) {
                return byLength;
            }
            return Boolean.compare(lastIsContext(b), lastIsContext(a));
        });
        for (Method m : candidates) {
            Invoker invoker = overload(clazz, m);
            if (invoker != null) {
                return invoker;
            }
        }
        return failing(UserFault.of("No public method named " + methodName
                + " with appropriate method signature found on class " + clazz.getName()));
    }

    private static boolean lastIsContext(Method m) {
        Class<?>[] p = m.getParameterTypes();
        return p.length > 0 && p[p.length - 1] == Context.class;
    }

    /** An invoker for one overload, or null when its signature is not one a handler may have. */
    private static Invoker overload(Class<?> clazz, Method m) {
        Class<?>[] p = m.getParameterTypes();
        Type[] generic = m.getGenericParameterTypes();
        boolean stream = false;
        Type input = null;
        boolean withContext = lastIsContext(m);
        int data = withContext ? p.length - 1 : p.length;
        if (data > 2) {
            return null;
        }
        if (data == 2) {
            if (p[0] != InputStream.class || p[1] != OutputStream.class) {
                return null;
            }
            stream = true;
        } else if (data == 1) {
            if (p[0] == OutputStream.class || p[0] == Context.class) {
                return null;
            }
            input = generic[0];
        }
        Object target = Modifier.isStatic(m.getModifiers()) ? null : instantiate(clazz);
        m.setAccessible(true);
        boolean isStream = stream;
        Type inputType = input;
        boolean returnsVoid = m.getReturnType() == void.class;
        return (event, context) -> {
            List<Object> arguments = new ArrayList<>();
            ByteArrayOutputStream output = null;
            if (isStream) {
                output = new ByteArrayOutputStream();
                arguments.add(new ByteArrayInputStream(event));
                arguments.add(output);
            } else if (inputType == InputStream.class) {
                arguments.add(new ByteArrayInputStream(event));
            } else if (inputType != null) {
                arguments.add(parseInput(event, inputType));
            }
            if (withContext) {
                arguments.add(context);
            }
            Object result;
            try {
                result = m.invoke(target, arguments.toArray());
            } catch (InvocationTargetException e) {
                throw e.getCause() == null ? e : e.getCause();
            }
            if (isStream) {
                return output.toByteArray();
            }
            return serialize(returnsVoid ? null : result);
        };
    }

    private static Object parseInput(byte[] event, Type type) {
        if (type == byte[].class) {
            return event;
        }
        try {
            return Json.bind(Json.parse(new String(event, StandardCharsets.UTF_8)), type);
        } catch (RuntimeException e) {
            throw new RuntimeException("An error occurred during JSON parsing", e);
        }
    }

    private static byte[] serialize(Object result) {
        try {
            return Json.write(result).getBytes(StandardCharsets.UTF_8);
        } catch (RuntimeException e) {
            throw new RuntimeException("An error occurred during JSON serialization of response", e);
        }
    }

    // ------------------------------------------------------------------------------------
    // Invocations.

    private static void loop(RuntimeApi api, Invoker invoker, Logger logger) throws IOException {
        String functionName = System.getenv("AWS_LAMBDA_FUNCTION_NAME");
        String functionVersion = System.getenv("AWS_LAMBDA_FUNCTION_VERSION");
        String logGroup = System.getenv("AWS_LAMBDA_LOG_GROUP_NAME");
        String logStream = System.getenv("AWS_LAMBDA_LOG_STREAM_NAME");
        int memory = parseInt(System.getenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"), 128);
        while (true) {
            RuntimeApi.Response next = api.next();
            String id = next.header("lambda-runtime-aws-request-id");
            String trace = next.header("lambda-runtime-trace-id");
            if (trace != null) {
                System.setProperty("com.amazonaws.xray.traceHeader", trace);
            } else {
                System.clearProperty("com.amazonaws.xray.traceHeader");
            }
            logger.setInvocation(id, next.header("lambda-runtime-aws-tenant-id"));
            LambdaContext context = new LambdaContext(
                    id,
                    logGroup,
                    logStream,
                    functionName,
                    functionVersion,
                    next.header("lambda-runtime-invoked-function-arn"),
                    parseLong(next.header("lambda-runtime-deadline-ms"), System.currentTimeMillis()),
                    memory,
                    logger,
                    trace,
                    next.header("lambda-runtime-aws-tenant-id"),
                    next.header("lambda-runtime-cognito-identity"),
                    next.header("lambda-runtime-client-context"));
            byte[] response = null;
            UserFault fault = null;
            String document = null;
            String errorType = null;
            try {
                response = invoker.call(next.body, context);
            } catch (UserFault f) {
                fault = f;
                document = f.document();
                errorType = "Runtime.BadFunctionCode";
            } catch (Throwable t) {
                filter(t);
                fault = UserFault.of(t, false);
                document = errorDocument(t);
                errorType = "Runtime.UserException";
            } finally {
                System.out.flush();
                System.err.flush();
            }
            if (fault == null) {
                api.respond(id, response);
            } else {
                // Logged first: what arrives after the answer would follow the END line.
                logger.logError(fault.reportable());
                api.error(id, document, errorType);
                if (fault.fatal) {
                    System.exit(1);
                }
            }
        }
    }

    /** An invocation error, as the official client's LambdaErrorConverter.fromThrowable. */
    static String errorDocument(Throwable t) {
        Map<String, Object> error = new LinkedHashMap<>();
        error.put("errorMessage", t.getLocalizedMessage() == null ? t.getClass().getName() : t.getLocalizedMessage());
        error.put("errorType", t.getClass().getName());
        List<String> frames = new ArrayList<>();
        for (StackTraceElement frame : t.getStackTrace()) {
            frames.add(frame.toString());
        }
        error.put("stackTrace", frames);
        return Json.write(error);
    }

    /** Cuts the runtime's own frames (and what called them) from a trace, recursively. */
    static Throwable filter(Throwable t) {
        java.util.Set<Throwable> seen = Collections.newSetFromMap(new java.util.IdentityHashMap<>());
        for (Throwable current = t; current != null && seen.add(current); current = current.getCause()) {
            StackTraceElement[] frames = current.getStackTrace();
            for (int i = 0; i < frames.length; i++) {
                if (frames[i].getClassName().startsWith(RUNTIME_PACKAGE)) {
                    current.setStackTrace(Arrays.copyOf(frames, i));
                    break;
                }
            }
        }
        return t;
    }

    static String trace(Throwable t) {
        filter(t);
        StringWriter out = new StringWriter();
        t.printStackTrace(new PrintWriter(out));
        return out.toString();
    }

    private static int parseInt(String s, int fallback) {
        try {
            return Integer.parseInt(s);
        } catch (RuntimeException e) {
            return fallback;
        }
    }

    private static long parseLong(String s, long fallback) {
        try {
            return Long.parseLong(s);
        } catch (RuntimeException e) {
            return fallback;
        }
    }

    // ------------------------------------------------------------------------------------
    // The context and the logger.

    /**
     * LambdaLogger: each call is one log event, however many lines it has. It is written as
     * one frame of the framing AWS's runtimes use on their telemetry descriptor (type
     * 0xa55a0003 for text, 0xa55a0002 for JSON records, big-endian length and microseconds,
     * message), into standard output, where Lamina reads frames between the lines System.out
     * prints.
     *
     * <p>As the official client's logger: calls with a level are dropped below
     * AWS_LAMBDA_LOG_LEVEL (calls without one, level UNDEFINED, never are); with
     * AWS_LAMBDA_LOG_FORMAT=JSON a String message becomes {@code {"timestamp", "message",
     * "level", "AWSRequestId", "tenantId"}} (absent fields left out, the request id that of
     * the latest invocation), in text a leveled one is prefixed {@code [LEVEL] }; byte[]
     * messages are written as they are. In text format LogLevel is only loaded by a caller
     * that uses it.
     */
    static final class Logger implements LambdaLogger {
        private static final int TEXT_FRAME = 0xa55a0003;
        private static final int JSON_FRAME = 0xa55a0002;
        private static final byte[] NULL_BYTES = "null".getBytes(StandardCharsets.UTF_8);

        private final PrintStream out = System.out;
        private final boolean json;
        private final String minimumLevelName;
        /** The ordinal of AWS_LAMBDA_LOG_LEVEL, read at the first leveled call; -1 before. */
        private volatile int minimumLevel = -1;
        private volatile String requestId;
        private volatile String tenantId;

        Logger(String format, String level) {
            this.json = "JSON".equalsIgnoreCase(format);
            this.minimumLevelName = level;
        }

        /** The invocation whose request id JSON records carry, until the next one. */
        void setInvocation(String requestId, String tenantId) {
            this.requestId = requestId;
            this.tenantId = tenantId;
        }

        /** The runtime's own error reports: ERROR records in JSON, plain text otherwise. */
        void logError(String message) {
            if (json) {
                log(message, LogLevel.ERROR);
            } else {
                frame(message.getBytes(StandardCharsets.UTF_8));
            }
        }

        @Override
        public void log(String message) {
            if (json) {
                frame(record(message, "UNDEFINED"));
            } else {
                frame(String.valueOf(message).getBytes(StandardCharsets.UTF_8));
            }
        }

        @Override
        public void log(byte[] message) {
            frame(message == null ? NULL_BYTES : message);
        }

        @Override
        public void log(String message, LogLevel level) {
            if (level == null || level == LogLevel.UNDEFINED) {
                log(message);
            } else if (enabled(level)) {
                if (json) {
                    frame(record(message, level.name()));
                } else {
                    frame(("[" + level.name() + "] " + message).getBytes(StandardCharsets.UTF_8));
                }
            }
        }

        @Override
        public void log(byte[] message, LogLevel level) {
            if (level == null || level == LogLevel.UNDEFINED || enabled(level)) {
                log(message);
            }
        }

        private boolean enabled(LogLevel level) {
            int minimum = minimumLevel;
            if (minimum < 0) {
                try {
                    minimum = minimumLevelName == null ? 0 : LogLevel.fromString(minimumLevelName).ordinal();
                } catch (IllegalArgumentException e) {
                    minimum = 0; // Lamina sets only valid levels; anything else filters nothing
                }
                minimumLevel = minimum;
            }
            return level.ordinal() >= minimum;
        }

        private byte[] record(String message, String level) {
            Map<String, Object> record = new LinkedHashMap<>();
            record.put("timestamp", timestamp(System.currentTimeMillis()));
            if (message != null) {
                record.put("message", message);
            }
            record.put("level", level);
            String id = requestId;
            if (id != null) {
                record.put("AWSRequestId", id);
            }
            String tenant = tenantId;
            if (tenant != null) {
                record.put("tenantId", tenant);
            }
            return (Json.write(record) + "\n").getBytes(StandardCharsets.UTF_8);
        }

        /** yyyy-MM-ddTHH:mm:ss.SSSZ in UTC, without loading DateTimeFormatter. */
        static String timestamp(long epochMillis) {
            java.time.LocalDateTime t = java.time.LocalDateTime.ofEpochSecond(
                    Math.floorDiv(epochMillis, 1000L), 0, java.time.ZoneOffset.UTC);
            StringBuilder out = new StringBuilder(24);
            pad(out, t.getYear(), 4).append('-');
            pad(out, t.getMonthValue(), 2).append('-');
            pad(out, t.getDayOfMonth(), 2).append('T');
            pad(out, t.getHour(), 2).append(':');
            pad(out, t.getMinute(), 2).append(':');
            pad(out, t.getSecond(), 2).append('.');
            return pad(out, (int) Math.floorMod(epochMillis, 1000L), 3).append('Z').toString();
        }

        private static StringBuilder pad(StringBuilder out, int value, int width) {
            String digits = Integer.toString(value);
            for (int i = digits.length(); i < width; i++) {
                out.append('0');
            }
            return out.append(digits);
        }

        private synchronized void frame(byte[] text) {
            java.time.Instant now = java.time.Instant.now();
            long micros = now.getEpochSecond() * 1_000_000L + now.getNano() / 1_000;
            java.nio.ByteBuffer frame = java.nio.ByteBuffer.allocate(16 + text.length);
            frame.putInt(json ? JSON_FRAME : TEXT_FRAME).putInt(text.length).putLong(micros).put(text);
            // One write: a frame must not interleave with what other threads print.
            out.write(frame.array(), 0, frame.capacity());
            out.flush();
        }
    }

    static final class LambdaContext implements Context {
        private final String requestId;
        private final String logGroup;
        private final String logStream;
        private final String functionName;
        private final String functionVersion;
        private final String invokedArn;
        private final long deadline;
        private final int memory;
        private final LambdaLogger logger;
        private final String traceId;
        private final String tenantId;
        private final CognitoIdentity identity;
        private final ClientContext clientContext;

        LambdaContext(String requestId, String logGroup, String logStream, String functionName,
                String functionVersion, String invokedArn, long deadline, int memory, LambdaLogger logger,
                String traceId, String tenantId, String identityJson, String clientContextJson) {
            this.requestId = requestId;
            this.logGroup = logGroup;
            this.logStream = logStream;
            this.functionName = functionName;
            this.functionVersion = functionVersion;
            this.invokedArn = invokedArn;
            this.deadline = deadline;
            this.memory = memory;
            this.logger = logger;
            this.traceId = traceId;
            this.tenantId = tenantId;
            this.identity = identity(identityJson);
            this.clientContext = clientContext(clientContextJson);
        }

        private static Map<?, ?> object(String json) {
            if (json == null || json.isEmpty()) {
                return null;
            }
            Object parsed = Json.parse(json);
            return parsed instanceof Map ? (Map<?, ?>) parsed : null;
        }

        private static String text(Map<?, ?> map, String key) {
            Object value = map == null ? null : map.get(key);
            return value == null ? null : value.toString();
        }

        private static Map<String, String> strings(Map<?, ?> map, String key) {
            Object value = map == null ? null : map.get(key);
            if (!(value instanceof Map)) {
                return null;
            }
            Map<String, String> out = new HashMap<>();
            for (Map.Entry<?, ?> e : ((Map<?, ?>) value).entrySet()) {
                out.put(String.valueOf(e.getKey()), e.getValue() == null ? null : e.getValue().toString());
            }
            return out;
        }

        /** Null without a Cognito identity, as in the official client. */
        private static CognitoIdentity identity(String json) {
            Map<?, ?> map = object(json);
            if (map == null) {
                return null;
            }
            String id = text(map, "cognitoIdentityId");
            String pool = text(map, "cognitoIdentityPoolId");
            return new CognitoIdentity() {
                public String getIdentityId() {
                    return id;
                }

                public String getIdentityPoolId() {
                    return pool;
                }
            };
        }

        private static ClientContext clientContext(String json) {
            Map<?, ?> map = object(json);
            if (map == null) {
                return null;
            }
            Object clientValue = map.get("client");
            Map<?, ?> client = clientValue instanceof Map ? (Map<?, ?>) clientValue : null;
            Map<String, String> custom = strings(map, "custom");
            Map<String, String> env = strings(map, "env");
            Client c = client == null ? null : new Client() {
                public String getInstallationId() {
                    return text(client, "installation_id");
                }

                public String getAppTitle() {
                    return text(client, "app_title");
                }

                public String getAppVersionName() {
                    return text(client, "app_version_name");
                }

                public String getAppVersionCode() {
                    return text(client, "app_version_code");
                }

                public String getAppPackageName() {
                    return text(client, "app_package_name");
                }
            };
            return new ClientContext() {
                public Client getClient() {
                    return c;
                }

                public Map<String, String> getCustom() {
                    return custom;
                }

                public Map<String, String> getEnvironment() {
                    return env;
                }
            };
        }

        public String getAwsRequestId() {
            return requestId;
        }

        public String getLogGroupName() {
            return logGroup;
        }

        public String getLogStreamName() {
            return logStream;
        }

        public String getFunctionName() {
            return functionName;
        }

        public String getFunctionVersion() {
            return functionVersion;
        }

        public String getInvokedFunctionArn() {
            return invokedArn;
        }

        public CognitoIdentity getIdentity() {
            return identity;
        }

        public ClientContext getClientContext() {
            return clientContext;
        }

        public int getRemainingTimeInMillis() {
            return (int) Math.max(0, deadline - System.currentTimeMillis());
        }

        public int getMemoryLimitInMB() {
            return memory;
        }

        public LambdaLogger getLogger() {
            return logger;
        }

        public String getTenantId() {
            return tenantId;
        }

        public String getXrayTraceId() {
            return traceId;
        }
    }

    // ------------------------------------------------------------------------------------
    // The Runtime API over one keep-alive connection.

    static final class RuntimeApi {
        private final String host;
        private final int port;
        private final String hostHeader;
        private Socket socket;
        private InputStream in;
        private OutputStream out;

        static final class Response {
            int status;
            final Map<String, String> headers = new HashMap<>();
            byte[] body = new byte[0];

            String header(String name) {
                return headers.get(name);
            }
        }

        RuntimeApi(String address) {
            if (address == null || address.isEmpty()) {
                throw new IllegalStateException("AWS_LAMBDA_RUNTIME_API is not set");
            }
            int colon = address.lastIndexOf(':');
            this.host = address.substring(0, colon).replaceAll("^\\[|\\]$", "");
            this.port = Integer.parseInt(address.substring(colon + 1));
            this.hostHeader = address;
        }

        Response next() throws IOException {
            Response response = exchange("GET", "/2018-06-01/runtime/invocation/next", null, null);
            if (response.status != 200) {
                throw new IOException("failed to get the next invocation: " + response.status);
            }
            return response;
        }

        void respond(String id, byte[] body) throws IOException {
            check(exchange("POST", "/2018-06-01/runtime/invocation/" + id + "/response", body, null));
        }

        void error(String id, String document, String errorType) throws IOException {
            check(exchange("POST", "/2018-06-01/runtime/invocation/" + id + "/error",
                    document.getBytes(StandardCharsets.UTF_8), errorType));
        }

        void initError(String document, String errorType) throws IOException {
            check(exchange("POST", "/2018-06-01/runtime/init/error",
                    document.getBytes(StandardCharsets.UTF_8), errorType));
        }

        private static void check(Response response) throws IOException {
            // 413: too large a result; the platform has already told the caller.
            if (response.status != 202 && response.status != 413) {
                throw new IOException("the Runtime API answered " + response.status + ": "
                        + new String(response.body, StandardCharsets.UTF_8));
            }
        }

        private Response exchange(String method, String path, byte[] body, String errorType) throws IOException {
            try {
                return attempt(method, path, body, errorType);
            } catch (IOException e) {
                close();
                return attempt(method, path, body, errorType);
            }
        }

        private void close() {
            try {
                if (socket != null) {
                    socket.close();
                }
            } catch (IOException e) {
                // Reconnecting anyway.
            }
            socket = null;
        }

        private Response attempt(String method, String path, byte[] body, String errorType) throws IOException {
            if (socket == null) {
                socket = new Socket(host, port);
                socket.setTcpNoDelay(true);
                in = new BufferedInputStream(socket.getInputStream());
                out = socket.getOutputStream();
            }
            StringBuilder head = new StringBuilder();
            head.append(method).append(' ').append(path).append(" HTTP/1.1\r\nHost: ").append(hostHeader)
                    .append("\r\n");
            if (body != null) {
                head.append("Content-Type: application/json\r\n");
                head.append("Content-Length: ").append(body.length).append("\r\n");
            }
            if (errorType != null) {
                head.append("Lambda-Runtime-Function-Error-Type: ").append(errorType).append("\r\n");
            }
            head.append("\r\n");
            byte[] headBytes = head.toString().getBytes(StandardCharsets.UTF_8);
            if (body == null) {
                out.write(headBytes);
            } else {
                byte[] all = Arrays.copyOf(headBytes, headBytes.length + body.length);
                System.arraycopy(body, 0, all, headBytes.length, body.length);
                out.write(all);
            }
            out.flush();
            return read();
        }

        private String line() throws IOException {
            ByteArrayOutputStream buffer = new ByteArrayOutputStream(128);
            while (true) {
                int b = in.read();
                if (b < 0) {
                    throw new IOException("the Runtime API closed the connection");
                }
                if (b == '\n') {
                    break;
                }
                if (b != '\r') {
                    buffer.write(b);
                }
            }
            return buffer.toString("ISO-8859-1");
        }

        private Response read() throws IOException {
            Response response = new Response();
            String status = line();
            response.status = Integer.parseInt(status.substring(9, 12));
            while (true) {
                String header = line();
                if (header.isEmpty()) {
                    break;
                }
                int colon = header.indexOf(':');
                if (colon > 0) {
                    response.headers.put(header.substring(0, colon).trim().toLowerCase(Locale.ROOT),
                            header.substring(colon + 1).trim());
                }
            }
            String length = response.header("content-length");
            if ("chunked".equalsIgnoreCase(response.header("transfer-encoding"))) {
                ByteArrayOutputStream body = new ByteArrayOutputStream();
                while (true) {
                    String size = line();
                    int semicolon = size.indexOf(';');
                    int n = Integer.parseInt((semicolon < 0 ? size : size.substring(0, semicolon)).trim(), 16);
                    if (n == 0) {
                        while (!line().isEmpty()) {
                            // Trailers.
                        }
                        break;
                    }
                    body.write(readFully(n));
                    line();
                }
                response.body = body.toByteArray();
            } else if (length != null) {
                response.body = readFully(Integer.parseInt(length));
            }
            if ("close".equalsIgnoreCase(response.header("connection"))) {
                close();
            }
            return response;
        }

        private byte[] readFully(int n) throws IOException {
            byte[] bytes = new byte[n];
            int read = 0;
            while (read < n) {
                int got = in.read(bytes, read, n - read);
                if (got < 0) {
                    throw new IOException("the Runtime API closed the connection");
                }
                read += got;
            }
            return bytes;
        }
    }
}
