package lamina.runtime;

import java.lang.reflect.Array;
import java.lang.reflect.Constructor;
import java.lang.reflect.Field;
import java.lang.reflect.GenericArrayType;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.lang.reflect.ParameterizedType;
import java.lang.reflect.Type;
import java.lang.reflect.TypeVariable;
import java.lang.reflect.WildcardType;
import java.math.BigDecimal;
import java.math.BigInteger;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Collection;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * A small JSON mapper standing in for the Jackson-based serialiser of AWS's Java runtime
 * (Lamina ships no third-party library). Its limits, by design:
 *
 * <ul>
 *   <li>reading binds to: String, the boxed and primitive numbers, boolean, BigDecimal,
 *       BigInteger, Object / Map (LinkedHashMap of the JSON values), List / Set /
 *       Collection and arrays of any supported type, enums (by name), records (through
 *       their canonical constructor, on Java 16 and later), and POJOs with a
 *       no-argument constructor, through {@code setX} methods or fields of the key's name
 *       (unknown keys are ignored, as AWS's serialiser does). No annotations, no
 *       java.time types, no polymorphism.
 *   <li>writing handles null, String, Character, numbers, booleans, enums (their name),
 *       Map (keys as strings), Collection, arrays (byte[] as base64, as Jackson does),
 *       records (their components, through the accessors) and POJOs through their public
 *       getters ({@code getX}/{@code isX}) and public fields.
 * </ul>
 */
final class Json {
    private Json() {}

    static final class JsonException extends RuntimeException {
        private static final long serialVersionUID = 1L;

        JsonException(String message) {
            super(message);
        }

        JsonException(String message, Throwable cause) {
            super(message, cause);
        }
    }

    // ------------------------------------------------------------------------------------
    // Parsing text into LinkedHashMap / ArrayList / String / BigDecimal / Boolean / null.

    static Object parse(String text) {
        Parser parser = new Parser(text);
        parser.skipSpace();
        Object value = parser.value();
        parser.skipSpace();
        if (parser.pos != text.length()) {
            throw parser.error("unexpected trailing characters");
        }
        return value;
    }

    private static final class Parser {
        final String s;
        int pos;

        Parser(String s) {
            this.s = s;
        }

        JsonException error(String what) {
            return new JsonException("invalid JSON at offset " + pos + ": " + what);
        }

        void skipSpace() {
            while (pos < s.length()) {
                char c = s.charAt(pos);
                if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
                    pos++;
                } else {
                    break;
                }
            }
        }

        Object value() {
            if (pos >= s.length()) {
                throw error("unexpected end");
            }
            char c = s.charAt(pos);
            switch (c) {
                case '{':
                    return object();
                case '[':
                    return array();
                case '"':
                    return string();
                case 't':
                    literal("true");
                    return Boolean.TRUE;
                case 'f':
                    literal("false");
                    return Boolean.FALSE;
                case 'n':
                    literal("null");
                    return null;
                default:
                    return number();
            }
        }

        void literal(String word) {
            if (!s.startsWith(word, pos)) {
                throw error("expected " + word);
            }
            pos += word.length();
        }

        Map<String, Object> object() {
            Map<String, Object> map = new LinkedHashMap<>();
            pos++;
            skipSpace();
            if (pos < s.length() && s.charAt(pos) == '}') {
                pos++;
                return map;
            }
            while (true) {
                skipSpace();
                if (pos >= s.length() || s.charAt(pos) != '"') {
                    throw error("expected a key");
                }
                String key = string();
                skipSpace();
                if (pos >= s.length() || s.charAt(pos) != ':') {
                    throw error("expected ':'");
                }
                pos++;
                skipSpace();
                map.put(key, value());
                skipSpace();
                if (pos < s.length() && s.charAt(pos) == ',') {
                    pos++;
                } else if (pos < s.length() && s.charAt(pos) == '}') {
                    pos++;
                    return map;
                } else {
                    throw error("expected ',' or '}'");
                }
            }
        }

        List<Object> array() {
            List<Object> list = new ArrayList<>();
            pos++;
            skipSpace();
            if (pos < s.length() && s.charAt(pos) == ']') {
                pos++;
                return list;
            }
            while (true) {
                skipSpace();
                list.add(value());
                skipSpace();
                if (pos < s.length() && s.charAt(pos) == ',') {
                    pos++;
                } else if (pos < s.length() && s.charAt(pos) == ']') {
                    pos++;
                    return list;
                } else {
                    throw error("expected ',' or ']'");
                }
            }
        }

        String string() {
            StringBuilder out = new StringBuilder();
            pos++;
            while (true) {
                if (pos >= s.length()) {
                    throw error("unterminated string");
                }
                char c = s.charAt(pos++);
                if (c == '"') {
                    return out.toString();
                }
                if (c != '\\') {
                    out.append(c);
                    continue;
                }
                if (pos >= s.length()) {
                    throw error("unterminated escape");
                }
                char e = s.charAt(pos++);
                switch (e) {
                    case 'b':
                        out.append('\b');
                        break;
                    case 'f':
                        out.append('\f');
                        break;
                    case 'n':
                        out.append('\n');
                        break;
                    case 'r':
                        out.append('\r');
                        break;
                    case 't':
                        out.append('\t');
                        break;
                    case 'u':
                        if (pos + 4 > s.length()) {
                            throw error("short \\u escape");
                        }
                        out.append((char) Integer.parseInt(s.substring(pos, pos + 4), 16));
                        pos += 4;
                        break;
                    default:
                        out.append(e);
                }
            }
        }

        BigDecimal number() {
            int start = pos;
            while (pos < s.length() && "+-0123456789.eE".indexOf(s.charAt(pos)) >= 0) {
                pos++;
            }
            if (start == pos) {
                throw error("unexpected character '" + s.charAt(pos) + "'");
            }
            try {
                return new BigDecimal(s.substring(start, pos));
            } catch (NumberFormatException e) {
                throw error("bad number");
            }
        }
    }

    // ------------------------------------------------------------------------------------
    // Binding parsed values to a Java type.

    static Object bind(Object value, Type type) {
        if (type instanceof TypeVariable || type instanceof WildcardType) {
            return plain(value);
        }
        if (type instanceof ParameterizedType) {
            ParameterizedType p = (ParameterizedType) type;
            Class<?> raw = (Class<?>) p.getRawType();
            Type[] args = p.getActualTypeArguments();
            if (Map.class.isAssignableFrom(raw)) {
                return bindMap(value, args.length == 2 ? args[1] : Object.class);
            }
            if (Collection.class.isAssignableFrom(raw)) {
                return bindCollection(value, raw, args.length == 1 ? args[0] : Object.class);
            }
            return bind(value, raw);
        }
        if (type instanceof GenericArrayType) {
            return bindArray(value, ((GenericArrayType) type).getGenericComponentType());
        }
        Class<?> c = (Class<?>) type;
        if (value == null) {
            if (c.isPrimitive()) {
                return bind(c == boolean.class ? Boolean.FALSE : BigDecimal.ZERO, c);
            }
            return null;
        }
        if (c == Object.class) {
            return plain(value);
        }
        if (c == String.class || c == CharSequence.class) {
            return value instanceof String ? value : write(value);
        }
        if (c == boolean.class || c == Boolean.class) {
            if (value instanceof Boolean) {
                return value;
            }
            if (value instanceof String) {
                return Boolean.valueOf((String) value);
            }
            throw mismatch(value, c);
        }
        if (c == char.class || c == Character.class) {
            if (value instanceof String && ((String) value).length() == 1) {
                return ((String) value).charAt(0);
            }
            throw mismatch(value, c);
        }
        if (isNumber(c)) {
            BigDecimal number;
            if (value instanceof BigDecimal) {
                number = (BigDecimal) value;
            } else if (value instanceof String) {
                try {
                    number = new BigDecimal(((String) value).trim());
                } catch (NumberFormatException e) {
                    throw mismatch(value, c);
                }
            } else {
                throw mismatch(value, c);
            }
            return number(number, c);
        }
        if (c.isEnum()) {
            if (!(value instanceof String)) {
                throw mismatch(value, c);
            }
            for (Object constant : c.getEnumConstants()) {
                if (((Enum<?>) constant).name().equals(value)) {
                    return constant;
                }
            }
            throw new JsonException("\"" + value + "\" is not one of the constants of " + c.getName());
        }
        if (Map.class.isAssignableFrom(c)) {
            return bindMap(value, Object.class);
        }
        if (Collection.class.isAssignableFrom(c)) {
            return bindCollection(value, c, Object.class);
        }
        if (c.isArray()) {
            if (c == byte[].class && value instanceof String) {
                return Base64.getDecoder().decode((String) value);
            }
            return bindArray(value, c.getComponentType());
        }
        if (Records.isRecord(c)) {
            return bindRecord(value, c);
        }
        return bindPojo(value, c);
    }

    /** A record through its canonical constructor; absent components are null, 0 or false. */
    private static Object bindRecord(Object value, Class<?> c) {
        if (!(value instanceof Map)) {
            throw mismatch(value, c);
        }
        Map<?, ?> fields = (Map<?, ?>) value;
        try {
            Object[] components = Records.components(c);
            Class<?>[] types = new Class<?>[components.length];
            Object[] arguments = new Object[components.length];
            for (int i = 0; i < components.length; i++) {
                types[i] = Records.type(components[i]);
                arguments[i] = bind(fields.get(Records.name(components[i])), Records.genericType(components[i]));
            }
            Constructor<?> canonical = c.getDeclaredConstructor(types);
            canonical.setAccessible(true);
            return canonical.newInstance(arguments);
        } catch (ReflectiveOperationException e) {
            throw new JsonException("cannot create a " + c.getName(), e);
        }
    }

    /**
     * Java 16's records through reflection: the runtime is compiled for Java 11, the oldest
     * Java runtime it serves, where neither {@code Class.isRecord} nor RecordComponent exist.
     */
    private static final class Records {
        private static final Method IS_RECORD = method(Class.class, "isRecord");
        private static final Method COMPONENTS = method(Class.class, "getRecordComponents");
        private static final Class<?> COMPONENT = componentClass();
        private static final Method NAME = method(COMPONENT, "getName");
        private static final Method TYPE = method(COMPONENT, "getType");
        private static final Method GENERIC_TYPE = method(COMPONENT, "getGenericType");
        private static final Method ACCESSOR = method(COMPONENT, "getAccessor");

        private Records() {}

        private static Class<?> componentClass() {
            try {
                return Class.forName("java.lang.reflect.RecordComponent");
            } catch (ClassNotFoundException e) {
                return null;
            }
        }

        private static Method method(Class<?> c, String name) {
            if (c == null) {
                return null;
            }
            try {
                return c.getMethod(name);
            } catch (NoSuchMethodException e) {
                return null;
            }
        }

        static boolean isRecord(Class<?> c) {
            if (IS_RECORD == null || COMPONENTS == null || ACCESSOR == null) {
                return false;
            }
            try {
                return (Boolean) IS_RECORD.invoke(c);
            } catch (ReflectiveOperationException e) {
                return false;
            }
        }

        static Object[] components(Class<?> c) throws ReflectiveOperationException {
            return (Object[]) COMPONENTS.invoke(c);
        }

        static String name(Object component) throws ReflectiveOperationException {
            return (String) NAME.invoke(component);
        }

        static Class<?> type(Object component) throws ReflectiveOperationException {
            return (Class<?>) TYPE.invoke(component);
        }

        static Type genericType(Object component) throws ReflectiveOperationException {
            return (Type) GENERIC_TYPE.invoke(component);
        }

        static Method accessor(Object component) throws ReflectiveOperationException {
            return (Method) ACCESSOR.invoke(component);
        }
    }

    private static boolean isNumber(Class<?> c) {
        return c == int.class || c == Integer.class || c == long.class || c == Long.class
                || c == double.class || c == Double.class || c == float.class || c == Float.class
                || c == short.class || c == Short.class || c == byte.class || c == Byte.class
                || c == BigDecimal.class || c == BigInteger.class || c == Number.class;
    }

    private static Object number(BigDecimal n, Class<?> c) {
        if (c == int.class || c == Integer.class) {
            return n.intValue();
        }
        if (c == long.class || c == Long.class) {
            return n.longValue();
        }
        if (c == double.class || c == Double.class) {
            return n.doubleValue();
        }
        if (c == float.class || c == Float.class) {
            return n.floatValue();
        }
        if (c == short.class || c == Short.class) {
            return n.shortValue();
        }
        if (c == byte.class || c == Byte.class) {
            return n.byteValue();
        }
        if (c == BigInteger.class) {
            return n.toBigInteger();
        }
        return plainNumber(n);
    }

    private static JsonException mismatch(Object value, Class<?> c) {
        return new JsonException("cannot deserialize " + describe(value) + " into " + c.getName());
    }

    private static String describe(Object value) {
        if (value instanceof Map) {
            return "a JSON object";
        }
        if (value instanceof List) {
            return "a JSON array";
        }
        if (value instanceof String) {
            return "the string " + write(value);
        }
        return String.valueOf(value);
    }

    /** A parsed value as untyped Java: numbers as Integer, Long or Double where they fit. */
    private static Object plain(Object value) {
        if (value instanceof BigDecimal) {
            return plainNumber((BigDecimal) value);
        }
        if (value instanceof Map) {
            return bindMap(value, Object.class);
        }
        if (value instanceof List) {
            return bindCollection(value, List.class, Object.class);
        }
        return value;
    }

    private static Object plainNumber(BigDecimal n) {
        if (n.scale() <= 0) {
            try {
                long l = n.longValueExact();
                if (l >= Integer.MIN_VALUE && l <= Integer.MAX_VALUE) {
                    return (int) l;
                }
                return l;
            } catch (ArithmeticException e) {
                return n.toBigInteger();
            }
        }
        return n.doubleValue();
    }

    private static Map<String, Object> bindMap(Object value, Type valueType) {
        if (!(value instanceof Map)) {
            throw mismatch(value, Map.class);
        }
        Map<String, Object> out = new LinkedHashMap<>();
        for (Map.Entry<?, ?> e : ((Map<?, ?>) value).entrySet()) {
            out.put((String) e.getKey(), bind(e.getValue(), valueType));
        }
        return out;
    }

    private static Collection<Object> bindCollection(Object value, Class<?> raw, Type itemType) {
        if (!(value instanceof List)) {
            throw mismatch(value, raw);
        }
        Collection<Object> out;
        if (Set.class.isAssignableFrom(raw)) {
            out = new LinkedHashSet<>();
        } else {
            out = new ArrayList<>();
        }
        if (!raw.isInterface() && !Modifier.isAbstract(raw.getModifiers())) {
            try {
                @SuppressWarnings("unchecked")
                Collection<Object> made = (Collection<Object>) raw.getDeclaredConstructor().newInstance();
                out = made;
            } catch (ReflectiveOperationException e) {
                // Keep the list or set made above.
            }
        }
        for (Object item : (List<?>) value) {
            out.add(bind(item, itemType));
        }
        return out;
    }

    private static Object bindArray(Object value, Type componentType) {
        if (!(value instanceof List)) {
            throw mismatch(value, Object[].class);
        }
        List<?> items = (List<?>) value;
        Class<?> component = rawClass(componentType);
        Object array = Array.newInstance(component, items.size());
        for (int i = 0; i < items.size(); i++) {
            Array.set(array, i, bind(items.get(i), componentType));
        }
        return array;
    }

    private static Class<?> rawClass(Type type) {
        if (type instanceof Class) {
            return (Class<?>) type;
        }
        if (type instanceof ParameterizedType) {
            return (Class<?>) ((ParameterizedType) type).getRawType();
        }
        if (type instanceof GenericArrayType) {
            return Array.newInstance(rawClass(((GenericArrayType) type).getGenericComponentType()), 0).getClass();
        }
        return Object.class;
    }

    private static Object bindPojo(Object value, Class<?> c) {
        if (!(value instanceof Map)) {
            throw mismatch(value, c);
        }
        Object target;
        try {
            Constructor<?> constructor = c.getDeclaredConstructor();
            constructor.setAccessible(true);
            target = constructor.newInstance();
        } catch (NoSuchMethodException e) {
            throw new JsonException("cannot deserialize into " + c.getName() + ": it has no zero-argument constructor");
        } catch (ReflectiveOperationException e) {
            throw new JsonException("cannot create a " + c.getName(), e);
        }
        for (Map.Entry<?, ?> e : ((Map<?, ?>) value).entrySet()) {
            String key = (String) e.getKey();
            Method setter = setter(c, key);
            try {
                if (setter != null) {
                    setter.setAccessible(true);
                    setter.invoke(target, bind(e.getValue(), setter.getGenericParameterTypes()[0]));
                    continue;
                }
                Field field = field(c, key);
                if (field != null) {
                    field.setAccessible(true);
                    field.set(target, bind(e.getValue(), field.getGenericType()));
                }
            } catch (ReflectiveOperationException failure) {
                throw new JsonException("cannot set " + key + " of " + c.getName(), failure);
            }
        }
        return target;
    }

    private static Method setter(Class<?> c, String key) {
        String name = "set" + key;
        for (Method m : c.getMethods()) {
            if (m.getParameterCount() == 1 && m.getName().equalsIgnoreCase(name)
                    && !Modifier.isStatic(m.getModifiers())) {
                return m;
            }
        }
        return null;
    }

    private static Field field(Class<?> c, String key) {
        for (Class<?> k = c; k != null && k != Object.class; k = k.getSuperclass()) {
            for (Field f : k.getDeclaredFields()) {
                int mods = f.getModifiers();
                if (f.getName().equals(key) && !Modifier.isStatic(mods) && !Modifier.isFinal(mods)) {
                    return f;
                }
            }
        }
        return null;
    }

    // ------------------------------------------------------------------------------------
    // Writing Java values as JSON.

    static String write(Object value) {
        StringBuilder out = new StringBuilder();
        write(value, out, new HashSet<>());
        return out.toString();
    }

    private static void write(Object value, StringBuilder out, Set<Object> path) {
        if (value == null) {
            out.append("null");
        } else if (value instanceof String || value instanceof Character || value instanceof CharSequence) {
            quote(value.toString(), out);
        } else if (value instanceof Boolean) {
            out.append(value);
        } else if (value instanceof Double || value instanceof Float) {
            double d = ((Number) value).doubleValue();
            if (Double.isNaN(d) || Double.isInfinite(d)) {
                quote(value.toString(), out);
            } else {
                out.append(value);
            }
        } else if (value instanceof BigDecimal) {
            out.append(((BigDecimal) value).toString());
        } else if (value instanceof Number) {
            out.append(value);
        } else if (value instanceof Enum) {
            quote(((Enum<?>) value).name(), out);
        } else if (value instanceof byte[]) {
            quote(Base64.getEncoder().encodeToString((byte[]) value), out);
        } else {
            if (!path.add(value)) {
                throw new JsonException("cannot serialize a " + value.getClass().getName() + " that contains itself");
            }
            if (value instanceof Map) {
                out.append('{');
                boolean first = true;
                for (Map.Entry<?, ?> e : ((Map<?, ?>) value).entrySet()) {
                    if (!first) {
                        out.append(',');
                    }
                    first = false;
                    quote(String.valueOf(e.getKey()), out);
                    out.append(':');
                    write(e.getValue(), out, path);
                }
                out.append('}');
            } else if (value instanceof Iterable) {
                out.append('[');
                boolean first = true;
                for (Object item : (Iterable<?>) value) {
                    if (!first) {
                        out.append(',');
                    }
                    first = false;
                    write(item, out, path);
                }
                out.append(']');
            } else if (value.getClass().isArray()) {
                out.append('[');
                for (int i = 0; i < Array.getLength(value); i++) {
                    if (i > 0) {
                        out.append(',');
                    }
                    write(Array.get(value, i), out, path);
                }
                out.append(']');
            } else {
                writePojo(value, out, path);
            }
            path.remove(value);
        }
    }

    private static void writePojo(Object value, StringBuilder out, Set<Object> path) {
        Map<String, Object> properties = new LinkedHashMap<>();
        Class<?> c = value.getClass();
        if (Records.isRecord(c)) {
            // Its components, in declaration order, as Jackson writes a record.
            try {
                for (Object component : Records.components(c)) {
                    Method accessor = Records.accessor(component);
                    accessor.setAccessible(true);
                    properties.put(Records.name(component), accessor.invoke(value));
                }
            } catch (ReflectiveOperationException | RuntimeException e) {
                throw new JsonException("cannot serialize a " + c.getName(), e);
            }
            write(properties, out, path);
            return;
        }
        try {
            for (Field f : c.getFields()) {
                if (!Modifier.isStatic(f.getModifiers())) {
                    properties.put(f.getName(), f.get(value));
                }
            }
            for (Method m : c.getMethods()) {
                if (m.getParameterCount() != 0 || Modifier.isStatic(m.getModifiers())
                        || m.getDeclaringClass() == Object.class) {
                    continue;
                }
                String name = m.getName();
                String property = null;
                if (name.startsWith("get") && name.length() > 3 && m.getReturnType() != void.class) {
                    property = name.substring(3);
                } else if (name.startsWith("is") && name.length() > 2
                        && (m.getReturnType() == boolean.class || m.getReturnType() == Boolean.class)) {
                    property = name.substring(2);
                }
                if (property == null) {
                    continue;
                }
                property = Character.toLowerCase(property.charAt(0)) + property.substring(1);
                m.setAccessible(true);
                properties.put(property, m.invoke(value));
            }
        } catch (ReflectiveOperationException | RuntimeException e) {
            throw new JsonException("cannot serialize a " + c.getName(), e);
        }
        write(properties, out, path);
    }

    private static void quote(String s, StringBuilder out) {
        out.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"':
                    out.append("\\\"");
                    break;
                case '\\':
                    out.append("\\\\");
                    break;
                case '\n':
                    out.append("\\n");
                    break;
                case '\r':
                    out.append("\\r");
                    break;
                case '\t':
                    out.append("\\t");
                    break;
                case '\b':
                    out.append("\\b");
                    break;
                case '\f':
                    out.append("\\f");
                    break;
                default:
                    if (c < 0x20) {
                        out.append(String.format("\\u%04x", (int) c));
                    } else {
                        out.append(c);
                    }
            }
        }
        out.append('"');
    }
}
