"""Lamina's runtime for Python functions: the loop between the Lambda Runtime API and the
function's handler, behaving as AWS's managed Python runtime (its bootstrap.py and the
awslambdaric client it runs) does.

Lamina starts it as `/var/lang/bin/pythonX.Y -S -u /var/runtime/bootstrap.pyc` in the
function's working directory (`/var/task`). It is written for a short cold start, so on
the way to the first invocation it imports nothing the interpreter has not loaded already
except the C modules `_socket` and `_json` (the `socket` and `json` packages cost ~10 ms
each): the Runtime API is spoken over one keep-alive HTTP/1.1 connection by hand, and
JSON goes through the same C scanner and encoder the json package uses. `-S` skips the
site module, so the interpreter's own site-packages (the host's, not the function's) stay
off sys.path; the paths AWS's runtime puts there are added below, and `.pth` files in the
code and layer directories are honoured as AWS's site.addsitedir calls honour them.
Anything heavier (traceback, logging's handler) is loaded only when it is needed.

Behaviour that AWS clients and functions rely on, as the official runtime has it:
- sys.path: the task root, /opt/python/lib/pythonX.Y/site-packages, /opt/python (the two
  /opt entries only without a user PYTHONPATH), /var/runtime, then the standard library;
  PYTHONPATH is set to the runtime directory for child processes.
- the handler `module.function` is imported once (module state survives warm invokes);
  failures answer Runtime.ImportModuleError, Runtime.HandlerNotFound,
  Runtime.UserCodeSyntaxError, Runtime.MalformedHandlerName,
  Runtime.BuiltInModuleConflict through /runtime/init/error, then the process exits.
- errors answer {"errorMessage", "errorType", "requestId", "stackTrace"}; results that
  cannot be serialised answer Runtime.MarshalError; Decimal values are written as their
  exact digits; python3.12 and later write non-ASCII characters as they are.
- the root logger gets Lambda's handler and format
  `[LEVEL]\\tTIMESTAMP\\tREQUEST_ID\\tmessage` (or the JSON format when
  AWS_LAMBDA_LOG_FORMAT=JSON) the moment logging is first imported, so that
  logging.basicConfig is the no-op it is on Lambda; print() output is unbuffered.
- each log record (and each error the runtime logs) is one log event, however many lines
  it has: it is written as one frame of AWS's telemetry framing (see _log_frame).
"""

import os
import sys
import time

import _json
import _socket

_TEXT_LOG_FORMAT = "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s\n"
_DATETIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_NBSP = "\u00a0"
_UNHANDLED_WARNING = (
    "LAMBDA_WARNING: Unhandled exception. The most likely cause is an issue in the function "
    "code. However, in rare cases, a Lambda runtime update can cause unexpected function "
    "behavior. For functions using managed runtimes, runtime updates can be triggered by a "
    "function change, or can be applied automatically. To determine if the runtime has been "
    "updated, check the runtime version in the INIT_START log entry. If this error "
    "correlates with a change in the runtime version, you may be able to mitigate this "
    "error by temporarily rolling back to the previous runtime version. For more "
    "information, see https://docs.aws.amazon.com/lambda/latest/dg/runtimes-update.html\r"
)

# Read from the environment by _read_environment() when main() starts, not at import: a
# zygote (zygote.py) imports this module once and forks it into many environments.
_LOG_FORMAT_JSON = False
_LOG_LEVEL = ""
_ENSURE_ASCII = True

# The invocation in progress, for the log handler's filter.
_request_id = None
_tenant_id = None


class FaultException(Exception):
    MARSHAL_ERROR = "Runtime.MarshalError"
    UNMARSHAL_ERROR = "Runtime.UnmarshalError"
    USER_CODE_SYNTAX_ERROR = "Runtime.UserCodeSyntaxError"
    HANDLER_NOT_FOUND = "Runtime.HandlerNotFound"
    IMPORT_MODULE_ERROR = "Runtime.ImportModuleError"
    BUILT_IN_MODULE_CONFLICT = "Runtime.BuiltInModuleConflict"
    MALFORMED_HANDLER_NAME = "Runtime.MalformedHandlerName"
    LAMBDA_CONTEXT_UNMARSHAL_ERROR = "Runtime.LambdaContextUnmarshalError"

    def __init__(self, exception_type, msg, trace=None):
        super().__init__(msg)
        self.exception_type = exception_type
        self.msg = msg
        self.trace = trace


# ---------------------------------------------------------------------------------------
# JSON through the json package's C accelerators.


class _DecodeContext:
    """The attributes _json's scanner reads from a JSONDecoder."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {
        "-Infinity": float("-inf"),
        "Infinity": float("inf"),
        "NaN": float("nan"),
    }.__getitem__
    memo = {}


try:
    _scan = _json.make_scanner(_DecodeContext)
except Exception:  # a Python whose accelerator differs: the json package decodes
    _scan = None
_encode_string = _json.encode_basestring_ascii
_WHITESPACE = " \t\n\r"
# Marks where an exact Decimal goes: the C encoder can only emit what it knows.
_DECIMAL_MARK = "\x00lamina-decimal-%x-" % id(_DecodeContext)


def _loads(data):
    text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    try:
        if _scan is None:
            raise ValueError("no scanner")
        start = len(text) - len(text.lstrip(_WHITESPACE))
        value, end = _scan(text, start)
        if text[end:].strip(_WHITESPACE):
            raise ValueError("extra data")
        return value
    except (StopIteration, ValueError):
        # Malformed: let the json package say exactly what is wrong.
        import json

        return json.loads(text)


def _make_encoder(default, encode_string):
    """json.dumps(allow_nan=True) through the C encoder, as the json package builds it.
    A fresh markers dict each time: after a failure the old one may hold stale ids."""
    try:
        return _json.make_encoder({}, default, encode_string, None, ": ", ", ", False, False, True)
    except (AttributeError, TypeError):  # a Python whose accelerator differs
        import json

        encoder = json.JSONEncoder(
            default=default,
            ensure_ascii=encode_string is _json.encode_basestring_ascii,
            allow_nan=True,
        )
        return lambda value, _indent_level: encoder.iterencode(value)


def _to_json(value):
    """Serialises as AWS's runtime does (simplejson, allow_nan, Decimal as its digits)."""
    decimals = []

    def default(obj):
        cls = type(obj)
        if cls.__name__ == "Decimal" and cls.__module__ in ("decimal", "_decimal", "_pydecimal"):
            if obj.is_nan():
                return float("nan")
            token = "%s%d\x00" % (_DECIMAL_MARK, len(decimals))
            decimals.append((token, str(obj)))
            return token
        raise TypeError("Object of type %s is not JSON serializable" % cls.__name__)

    text = "".join(_make_encoder(default, _encode_string)(value, 0))
    for token, digits in decimals:
        text = text.replace(_encode_string(token), digits)
    return text


# ---------------------------------------------------------------------------------------
# The Runtime API, over one keep-alive HTTP/1.1 connection.


class LambdaRuntimeClientError(Exception):
    def __init__(self, endpoint, response_code, response_body):
        super().__init__(
            "Request to Lambda Runtime '%s' endpoint failed. Reason: '%s'. Response body: '%s'"
            % (endpoint, response_code, response_body)
        )


class _ConnectionLost(Exception):
    pass


class RuntimeApiClient:
    def __init__(self, address):
        if address.startswith("["):
            host, _, port = address[1:].partition("]:")
            self._family = _socket.AF_INET6
        else:
            host, _, port = address.rpartition(":")
            self._family = _socket.AF_INET
        self._address = (host, int(port))
        self._host = address
        self._sock = None
        self._buffer = b""
        self._next_request = (
            "GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: %s\r\n\r\n" % address
        ).encode("latin-1")

    def _connect(self):
        sock = _socket.socket(self._family, _socket.SOCK_STREAM)
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        sock.connect(self._address)
        self._sock = sock
        self._buffer = b""

    def _close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None
        self._buffer = b""

    def _recv(self):
        chunk = self._sock.recv(65536)
        if not chunk:
            raise _ConnectionLost()
        return chunk

    def _exchange(self, head, body):
        # The server may have closed an idle keep-alive connection: reconnect once.
        for attempt in (1, 2):
            try:
                if self._sock is None:
                    self._connect()
                if len(body) <= 65536:
                    self._sock.sendall(head + body)
                else:
                    self._sock.sendall(head)
                    self._sock.sendall(body)
                return self._read_response()
            except (OSError, _ConnectionLost):
                self._close()
                if attempt == 2:
                    raise

    def _read_response(self):
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        while end < 0:
            buffer += self._recv()
            end = buffer.find(b"\r\n\r\n")
        lines = buffer[:end].decode("utf-8", "replace").split("\r\n")
        rest = buffer[end + 4 :]
        status = int(lines[0][9:12])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = headers.get("content-length")
        if length is not None:
            length = int(length)
            if len(rest) < length:
                parts = [rest]
                have = len(rest)
                while have < length:
                    chunk = self._recv()
                    parts.append(chunk)
                    have += len(chunk)
                rest = b"".join(parts)
            body, self._buffer = rest[:length], rest[length:]
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = self._read_chunked(rest)
        else:
            parts = [rest]
            try:
                while True:
                    parts.append(self._recv())
            except _ConnectionLost:
                pass
            body = b"".join(parts)
            self._close()
        if headers.get("connection", "").lower() == "close":
            self._close()
        return status, headers, body

    def _read_chunked(self, rest):
        parts = []
        while True:
            end = rest.find(b"\r\n")
            while end < 0:
                rest += self._recv()
                end = rest.find(b"\r\n")
            size = int(rest[:end].split(b";")[0], 16)
            rest = rest[end + 2 :]
            while len(rest) < size + 2:
                rest += self._recv()
            if size == 0:
                # Skip trailers up to the blank line.
                while not rest.startswith(b"\r\n") and rest.find(b"\r\n\r\n") < 0:
                    rest += self._recv()
                cut = 2 if rest.startswith(b"\r\n") else rest.find(b"\r\n\r\n") + 4
                self._buffer = rest[cut:]
                return b"".join(parts)
            parts.append(rest[:size])
            rest = rest[size + 2 :]

    def next_invocation(self):
        status, headers, body = self._exchange(self._next_request, b"")
        if status != 200:
            raise LambdaRuntimeClientError("/2018-06-01/runtime/invocation/next", status, body)
        return headers, body

    def _post(self, path, body, extra_headers, expected):
        head = (
            "POST %s HTTP/1.1\r\nHost: %s\r\n%sContent-Length: %d\r\n\r\n"
            % (path, self._host, extra_headers, len(body))
        ).encode("utf-8")
        status, _, response = self._exchange(head, body)
        if status not in expected:
            raise LambdaRuntimeClientError(path, status, response)

    def post_invocation_result(self, invoke_id, result, content_type):
        # 413: the result was too large; the platform has already answered the caller
        # with Function.ResponseSizeTooLarge, and the environment stays usable.
        self._post(
            "/2018-06-01/runtime/invocation/%s/response" % invoke_id,
            result,
            "Content-Type: %s\r\n" % content_type,
            (202, 413),
        )

    def post_invocation_error(self, invoke_id, error):
        self._post(
            "/2018-06-01/runtime/invocation/%s/error" % invoke_id,
            _to_json(error).encode("utf-8"),
            "Content-Type: application/json\r\nLambda-Runtime-Function-Error-Type: %s\r\n"
            % _header_safe(error.get("errorType") or "Unhandled"),
            (202,),
        )

    def post_init_error(self, error):
        self._post(
            "/2018-06-01/runtime/init/error",
            _to_json(error).encode("utf-8"),
            "Content-Type: application/json\r\nLambda-Runtime-Function-Error-Type: %s\r\n"
            % _header_safe(error.get("errorType") or "Unhandled"),
            (202,),
        )


def _header_safe(value):
    return "".join(c for c in str(value) if " " <= c <= "~")


# ---------------------------------------------------------------------------------------
# The context object handlers receive.


class CognitoIdentity(object):
    __slots__ = ["cognito_identity_id", "cognito_identity_pool_id"]

    def __repr__(self):
        return (
            f"{self.__class__.__name__}(["
            f"cognito_identity_id={self.cognito_identity_id},"
            f"cognito_identity_pool_id={self.cognito_identity_pool_id}"
            "])"
        )


class Client(object):
    __slots__ = [
        "installation_id",
        "app_title",
        "app_version_name",
        "app_version_code",
        "app_package_name",
    ]

    def __repr__(self):
        return (
            f"{self.__class__.__name__}(["
            f"installation_id={self.installation_id},"
            f"app_title={self.app_title},"
            f"app_version_name={self.app_version_name},"
            f"app_version_code={self.app_version_code},"
            f"app_package_name={self.app_package_name}"
            "])"
        )


class ClientContext(object):
    __slots__ = ["custom", "env", "client"]

    def __repr__(self):
        return (
            f"{self.__class__.__name__}(["
            f"custom={self.custom},"
            f"env={self.env},"
            f"client={self.client}"
            "])"
        )


def _object_from_dict(cls, values):
    if values is None:
        return None
    obj = cls()
    for field in cls.__slots__:
        setattr(obj, field, values.get(field, None))
    return obj


class LambdaContext(object):
    def __init__(
        self,
        invoke_id,
        client_context,
        cognito_identity,
        epoch_deadline_time_in_ms,
        invoked_function_arn=None,
        tenant_id=None,
    ):
        environ = os.environ
        self.aws_request_id = invoke_id
        self.log_group_name = environ.get("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream_name = environ.get("AWS_LAMBDA_LOG_STREAM_NAME")
        self.function_name = environ.get("AWS_LAMBDA_FUNCTION_NAME")
        self.memory_limit_in_mb = environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        self.function_version = environ.get("AWS_LAMBDA_FUNCTION_VERSION")
        self.invoked_function_arn = invoked_function_arn
        self.tenant_id = tenant_id

        self.client_context = _object_from_dict(ClientContext, client_context)
        if self.client_context is not None:
            self.client_context.client = _object_from_dict(Client, self.client_context.client)

        self.identity = _object_from_dict(CognitoIdentity, {})
        if cognito_identity is not None:
            self.identity.cognito_identity_id = cognito_identity.get("cognitoIdentityId")
            self.identity.cognito_identity_pool_id = cognito_identity.get("cognitoIdentityPoolId")

        self._epoch_deadline_time_in_ms = epoch_deadline_time_in_ms

    def get_remaining_time_in_millis(self):
        remaining = self._epoch_deadline_time_in_ms - int(time.time() * 1000)
        return remaining if remaining > 0 else 0

    def log(self, msg):
        sys.stdout.write(str(msg))

    def __repr__(self):
        return (
            f"{self.__class__.__name__}(["
            f"aws_request_id={self.aws_request_id},"
            f"log_group_name={self.log_group_name},"
            f"log_stream_name={self.log_stream_name},"
            f"function_name={self.function_name},"
            f"memory_limit_in_mb={self.memory_limit_in_mb},"
            f"function_version={self.function_version},"
            f"invoked_function_arn={self.invoked_function_arn},"
            f"client_context={self.client_context},"
            f"identity={self.identity},"
            f"tenant_id={self.tenant_id}"
            "])"
        )


def _parse_json_header(value, name):
    try:
        return _loads(value)
    except Exception as e:
        raise FaultException(
            FaultException.LAMBDA_CONTEXT_UNMARSHAL_ERROR,
            "Unable to parse {} JSON: {}".format(name, str(e)),
            None,
        )


# ---------------------------------------------------------------------------------------
# Logs.

_RESERVED_LOG_FIELDS = {
    "name",
    "msg",
    "args",
    "levelname",
    "levelno",
    "pathname",
    "filename",
    "module",
    "exc_info",
    "exc_text",
    "stack_info",
    "lineno",
    "funcName",
    "created",
    "msecs",
    "relativeCreated",
    "thread",
    "threadName",
    "processName",
    "process",
    "aws_request_id",
    "tenant_id",
    "_frame_type",
}


def _setup_logging(logging):
    """Gives the root logger Lambda's handler, as the official runtime does at start."""
    logging.Formatter.converter = time.gmtime
    root = logging.getLogger()

    frame_type = _JSON_FRAME if _LOG_FORMAT_JSON else _TEXT_FRAME

    class LambdaLoggerHandler(logging.Handler):
        def emit(self, record):
            _log_frame(self.format(record), frame_type)

    class LambdaLoggerFilter(logging.Filter):
        def filter(self, record):
            record.aws_request_id = _request_id or ""
            record.tenant_id = _tenant_id
            return True

    class JsonFormatter(logging.Formatter):
        def __init__(self):
            super().__init__(datefmt=_DATETIME_FORMAT)

        def format(self, record):
            record.levelno = min(50, max(0, record.levelno)) // 10 * 10
            record.levelname = logging.getLevelName(record.levelno)
            exc_info = record.exc_info
            if exc_info:
                import traceback

                stack_trace = traceback.format_tb(exc_info[2])
                error_type = exc_info[0].__name__
                error_message = str(exc_info[1])
                location = f"{record.pathname}:{record.funcName}:{record.lineno}"
            else:
                stack_trace = error_type = error_message = location = None
            result = {
                "timestamp": self.formatTime(record, self.datefmt),
                "level": record.levelname,
                "message": record.getMessage(),
                "logger": record.name,
                "stackTrace": stack_trace,
                "errorType": error_type,
                "errorMessage": error_message,
                "requestId": getattr(record, "aws_request_id", None),
                "location": location,
            }
            if getattr(record, "tenant_id", None) is not None:
                result["tenantId"] = record.tenant_id
            result.update(
                (key, value)
                for key, value in record.__dict__.items()
                if key not in _RESERVED_LOG_FIELDS and key not in result
            )
            result = {k: v for k, v in result.items() if v is not None}
            return _to_json_unescaped(result) + "\n"

    handler = LambdaLoggerHandler()
    if _LOG_FORMAT_JSON:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_TEXT_LOG_FORMAT, "%Y-%m-%dT%H:%M:%S"))
    if _LOG_LEVEL in logging._nameToLevel:
        root.setLevel(_LOG_LEVEL)
    handler.addFilter(LambdaLoggerFilter())
    root.addHandler(handler)


def _to_json_unescaped(value):
    return "".join(_make_encoder(_not_serializable, _json.encode_basestring)(value, 0))


def _not_serializable(obj):
    raise TypeError("Object of type %s is not JSON serializable" % type(obj).__name__)


class _LoggingImportHook:
    """Finishes the import of `logging` by installing Lambda's handler on the root logger:
    everything that logs (the function, its libraries) imports logging first, and the
    handler is in place before any of it runs, exactly as if installed at start-up."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name != "logging":
            return None
        sys.meta_path.remove(cls)
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(name, path, target) if find_spec is not None else None
            if spec is not None:
                break
        else:
            return None
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _setup_logging(module)

        spec.loader.exec_module = exec_module
        return spec


# Log records go out as frames, as AWS's runtime writes them to its telemetry descriptor
# (FramedTelemetryLogSink: type, big-endian length, big-endian microseconds, message), so a
# multi-line record is one log event. Lamina reads them from the stdout pipe, between the
# lines print() writes, so both keep their order.
_TEXT_FRAME = b"\xa5\x5a\x00\x03"
_JSON_FRAME = b"\xa5\x5a\x00\x02"


def _log_frame(message, frame_type):
    data = message.encode("utf-8", "replace")
    frame = memoryview(
        frame_type
        + len(data).to_bytes(4, "big")
        + (time.time_ns() // 1000).to_bytes(8, "big")
        + data
    )
    while frame:
        frame = frame[os.write(1, frame) :]


def _replace_line_indentation(line, indent_char, new_indent_char):
    count = 0
    for c in line:
        if c != indent_char:
            break
        count += 1
    return (new_indent_char * count) + line[count:]


def _log_error(error):
    if _LOG_FORMAT_JSON:
        record = {
            "timestamp": time.strftime(_DATETIME_FORMAT, time.gmtime(time.time())),
            "log_level": "ERROR",
        }
        record.update(error)
        lines = [_to_json(record)]
    else:
        description = "[ERROR]"
        error_type = error.get("errorType")
        if error_type:
            description += " " + error_type
        error_message = error.get("errorMessage")
        if error_message:
            if error_type:
                description += ":"
            description += " " + error_message
        lines = [description]
        stack_trace = error.get("stackTrace")
        if stack_trace is not None:
            lines.append("Traceback (most recent call last):")
            for element in stack_trace:
                if element == "":
                    lines.append("")
                else:
                    for line in element.splitlines():
                        lines.append(_replace_line_indentation(line, " ", _NBSP))
    # One log event, its lines joined as AWS's framed log sink joins them.
    _log_frame("\n".join(lines), _JSON_FRAME if _LOG_FORMAT_JSON else _TEXT_FRAME)


# ---------------------------------------------------------------------------------------
# Errors.


def make_error(error_message, error_type, stack_trace, invoke_id=None):
    return {
        "errorMessage": error_message if error_message else "",
        "errorType": error_type if error_type else "",
        "requestId": invoke_id if invoke_id is not None else "",
        "stackTrace": stack_trace if stack_trace else [],
    }


def _user_frames(tb):
    """The traceback from the first frame outside this file on, as AWS's runtime trims it."""
    import traceback

    frames = [(f.filename, f.lineno, f.name, f.line) for f in traceback.extract_tb(tb)]
    for i in range(len(frames)):
        if "/bootstrap.py" not in frames[i][0]:
            frames = frames[i:]
            break
    return traceback.format_list(frames)


def _fault_result(exc_info, msg):
    etype, value, tb = exc_info
    return make_error(msg if msg else str(value), etype.__name__, _user_frames(tb))


# ---------------------------------------------------------------------------------------
# Start-up.


def _has_pth_files(directory):
    try:
        return any(name.endswith(".pth") for name in os.listdir(directory))
    except OSError:
        return False


def _set_sys_path(task_root):
    """sys.path as AWS's runtime sets it, in its order."""
    opt_site_packages = "/opt/python/lib/python%d.%d/site-packages" % sys.version_info[:2]
    pythonpath_set = "PYTHONPATH" in os.environ
    if not pythonpath_set:
        sys.path.insert(0, "/opt/python")
        sys.path.insert(0, opt_site_packages)
    sys.path.insert(0, task_root)
    # AWS's runtime then makes these site directories (site.addsitedir), which honours
    # their .pth files and appends the ones that do not exist to sys.path once more. The
    # site module is only worth loading when there is a .pth file to read.
    site = None
    for directory in [task_root] if pythonpath_set else [task_root, opt_site_packages, "/opt/python"]:
        if not os.path.isdir(directory):
            sys.path.append(directory)
        elif _has_pth_files(directory):
            if site is None:
                import site
            site.addsitedir(directory)
    if not pythonpath_set:
        os.environ["PYTHONPATH"] = os.environ.get("LAMBDA_RUNTIME_DIR", "/var/runtime")


def _install_builtins():
    """exit() and quit(), which the site module would have provided."""
    import builtins
    import _sitebuiltins

    builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
    builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")


def _import_module(name):
    import _frozen_importlib

    return _frozen_importlib._gcd_import(name)


def _get_handler(handler):
    try:
        modname, fname = handler.rsplit(".", 1)
    except ValueError as e:
        raise FaultException(
            FaultException.MALFORMED_HANDLER_NAME,
            "Bad handler '{}': {}".format(handler, str(e)),
        )
    try:
        if modname.split(".")[0] in sys.builtin_module_names:
            raise FaultException(
                FaultException.BUILT_IN_MODULE_CONFLICT,
                "Cannot use built-in module {} as a handler module".format(modname),
            )
        module = _import_module(modname.replace("/", "."))
    except ImportError as e:
        raise FaultException(
            FaultException.IMPORT_MODULE_ERROR,
            "Unable to import module '{}': {}".format(modname, str(e)),
        )
    except SyntaxError as e:
        trace = ['  File "%s" Line %s\n    %s' % (e.filename, e.lineno, e.text)]
        raise FaultException(
            FaultException.USER_CODE_SYNTAX_ERROR,
            "Syntax error in module '{}': {}".format(modname, str(e)),
            trace,
        )
    try:
        return getattr(module, fname)
    except AttributeError:
        raise FaultException(
            FaultException.HANDLER_NOT_FOUND,
            "Handler '{}' missing on module '{}'".format(fname, modname),
            None,
        )


def _handle(client, handler, headers, body):
    invoke_id = headers.get("lambda-runtime-aws-request-id")
    error = None
    try:
        client_context = headers.get("lambda-runtime-client-context")
        cognito_identity = headers.get("lambda-runtime-cognito-identity")
        context = LambdaContext(
            invoke_id,
            _parse_json_header(client_context, "Client Context") if client_context else None,
            _parse_json_header(cognito_identity, "Cognito Identity") if cognito_identity else None,
            int(headers.get("lambda-runtime-deadline-ms") or 0),
            headers.get("lambda-runtime-invoked-function-arn"),
            headers.get("lambda-runtime-aws-tenant-id"),
        )
        if headers.get("content-type", "application/json") == "application/json":
            try:
                event = _loads(body)
            except Exception as e:
                raise FaultException(
                    FaultException.UNMARSHAL_ERROR,
                    "Unable to unmarshal input: {}".format(str(e)),
                    None,
                )
        else:
            event = body
        response = handler(event, context)
        if isinstance(response, bytes):
            result, content_type = response, "application/unknown"
        else:
            try:
                result = _to_json(response).encode("utf-8")
            except Exception as e:
                raise FaultException(
                    FaultException.MARSHAL_ERROR,
                    "Unable to marshal response: {}".format(str(e)),
                    None,
                )
            content_type = "application/json"
    except FaultException as e:
        error = make_error(e.msg, e.exception_type, e.trace, invoke_id)
    except Exception:
        etype, value, tb = sys.exc_info()
        error = make_error(str(value), etype.__name__, _user_frames(tb), invoke_id)
    if error is not None:
        _log_error(error)
        client.post_invocation_error(invoke_id, error)
    else:
        client.post_invocation_result(invoke_id, result, content_type)


def _read_environment():
    global _LOG_FORMAT_JSON, _LOG_LEVEL, _ENSURE_ASCII, _encode_string
    _LOG_FORMAT_JSON = (os.environ.get("AWS_LAMBDA_LOG_FORMAT") or "").upper() == "JSON"
    raw_level = os.environ.get("AWS_LAMBDA_LOG_LEVEL")
    _LOG_LEVEL = {None: "", "TRACE": "DEBUG"}.get(raw_level, raw_level).upper()
    # AWS's runtimes for python3.12 and later write non-ASCII characters unescaped.
    _ENSURE_ASCII = os.environ.get("AWS_EXECUTION_ENV") not in (
        "AWS_Lambda_python3.12",
        "AWS_Lambda_python3.13",
        "AWS_Lambda_python3.14",
        "AWS_Lambda_python3.15",
    )
    _encode_string = _json.encode_basestring_ascii if _ENSURE_ASCII else _json.encode_basestring


def main():
    global _request_id, _tenant_id
    _read_environment()
    sys.argv[0] = os.path.join(os.environ.get("LAMBDA_RUNTIME_DIR", "/var/runtime"), "bootstrap.py")
    _install_builtins()
    if "logging" in sys.modules:
        _setup_logging(sys.modules["logging"])
    else:
        sys.meta_path.insert(0, _LoggingImportHook)
    _set_sys_path(os.getcwd())
    client = RuntimeApiClient(os.environ["AWS_LAMBDA_RUNTIME_API"])

    error = None
    try:
        handler = _get_handler(os.environ.get("_HANDLER", ""))
    except FaultException as e:
        error = make_error(e.msg, e.exception_type, e.trace)
    except Exception:
        error = _fault_result(sys.exc_info(), None)
    if error is not None:
        import logging

        logging.warning(_UNHANDLED_WARNING)
        _log_error(error)
        client.post_init_error(error)
        sys.exit(1)

    environ = os.environ
    while True:
        headers, body = client.next_invocation()
        _request_id = headers.get("lambda-runtime-aws-request-id")
        _tenant_id = headers.get("lambda-runtime-aws-tenant-id")
        trace_id = headers.get("lambda-runtime-trace-id")
        if trace_id is not None:
            environ["_X_AMZN_TRACE_ID"] = trace_id
        elif "_X_AMZN_TRACE_ID" in environ:
            del environ["_X_AMZN_TRACE_ID"]
        _handle(client, handler, headers, body)


if __name__ == "__main__":
    if os.environ.get("_LAMINA_ZYGOTE") == "1":
        # Lamina's zygote for this runtime (zygote.py): it forks environments' processes,
        # each of which calls main() with the environment's variables.
        import importlib.machinery
        import importlib.util

        _path = os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), "zygote.pyc")
        _loader = importlib.machinery.SourcelessFileLoader("_lamina_zygote", _path)
        _zygote = importlib.util.module_from_spec(importlib.util.spec_from_loader(_loader.name, _loader))
        _loader.exec_module(_zygote)
        _zygote.serve(sys.modules[__name__])
    else:
        main()
