/**
 * Lamina's runtime for Node.js functions: the loop between the Lambda Runtime API and the
 * function's handler, behaving as AWS's managed Node.js runtime (aws-lambda-nodejs-
 * runtime-interface-client) does.
 *
 * Lamina starts it as `/var/lang/bin/node [memory flags] /var/runtime/index.js` in the
 * function's working directory (`/var/task`), with NODE_PATH as AWS sets it.
 *
 * - The handler `file.export` (or `dir/file.nested.export`) is loaded as the official
 *   client loads it: an extensionless file or a CommonJS `.js` with require(), `.js` in a
 *   `"type": "module"` package and `.mjs` with import(), `.cjs` with require(), else a
 *   package resolved from the task root. Failures answer Runtime.ImportModuleError,
 *   Runtime.HandlerNotFound, Runtime.UserCodeSyntaxError or Runtime.MalformedHandlerName
 *   through /runtime/init/error.
 * - async handlers answer when their promise settles; callback handlers when the callback
 *   is called and, unless `context.callbackWaitsForEmptyEventLoop` is false, the event
 *   loop has emptied; `context.succeed/fail/done` answer at once.
 * - errors answer {"errorType", "errorMessage", "trace"}; console.* writes
 *   `TIMESTAMP\tREQUEST_ID\tLEVEL\tmessage` (or JSON with AWS_LAMBDA_LOG_FORMAT=JSON),
 *   honouring AWS_LAMBDA_LOG_LEVEL, each call one log event however many lines it has
 *   (a frame, see writeFrame).
 *
 * For a short cold start it is a CommonJS script (an ES module entry point costs the ES
 * module loader, ~9 ms of CPU, which only ES module handlers need, and those load through
 * require(esm) where node allows it), it keeps node's built-in code cache usable by
 * relaxing AWS's V8 flags while init runs (below), and it speaks the
 * Runtime API over one keep-alive TCP connection by hand (no `http` module). The socket
 * is unreferenced whenever no request is in flight, so that "the event loop is empty"
 * means what it means on Lambda. Handlers are required through a `require` rooted at
 * `index.mjs` beside this file, so that module-not-found messages read
 * "Require stack:\n- /var/runtime/index.mjs" as on Lambda.
 */

'use strict';

// ---------------------------------------------------------------------------------------
// V8 flags during init.
//
// Node compiles its built-in modules (`net`, `stream`, `http`, `crypto`, the ES module
// loader, ...) from a code cache embedded in the binary, which V8 accepts only when the
// hash of the non-default V8 flags is the one the cache was built with: any flag on the
// command line — AWS's `--expose-gc` and heap limits among them — makes V8 reject it,
// and every built-in loaded after start is compiled from source (`net` and its streams:
// 18 ms instead of 5 ms here). The flags have done their work by the time this script
// runs: the heap was sized from them when the isolate was created, and `gc` was installed
// on the global object. So they are set back to V8's defaults while the runtime and the
// function's module load (heap_size_limit and `gc` stay as AWS's flags made them), and
// restored once init is over, so that what the flags govern later — the heap of a Worker
// started by an invocation, `gc` in a new vm context — is as on Lambda. (A Worker
// started while the function's module loads gets V8's default heap size instead.)
// `process.binding('v8')` is the `setFlagsFromString` that does not load `v8` (which
// loads the streams before the flags are relaxed); its deprecation warning is AWS's
// runtime's business, not the function's, so it is silenced.
/** Sets the relaxed flags back to AWS's values; null when nothing was relaxed. */
const restoreV8Flags = (() => {
  const ours = /^--(expose[-_]gc|max[-_]semi[-_]space[-_]size=\d+|max[-_]old[-_]space[-_]size=\d+)$/;
  const given = process.execArgv.filter((arg) => ours.test(arg));
  if (given.length === 0) {
    return null;
  }
  const noDeprecation = process.noDeprecation;
  try {
    process.noDeprecation = true;
    const { setFlagsFromString } = process.binding('v8');
    const set = (flags) => setFlagsFromString(flags.join(' '));
    set(given.map((flag) => (flag.includes('=') ? flag.replace(/=\d+$/, '=0') : '--no-expose-gc')));
    return () => set(given);
  } catch (_) {
    return null;
  } finally {
    process.noDeprecation = noDeprecation;
  }
})();

const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');
const util = require('node:util');

// `module.constructor` is the CommonJS loader's Module; `require('node:module')` would
// also load the ES module loader and source maps (~2 ms).
const userRequire = module.constructor.createRequire(path.join(__dirname, 'index.mjs'));

// ---------------------------------------------------------------------------------------
// Errors, shaped as the official client shapes them.

class ImportModuleError extends Error {}
class HandlerNotFound extends Error {}
class MalformedHandlerName extends Error {}
class UserCodeSyntaxError extends Error {}
class NodeJsExit extends Error {
  constructor() {
    super(
      'The Lambda runtime client detected an unexpected Node.js exit code. This is most commonly caused by a Promise that was never settled. For more information, see https://nodejs.org/docs/latest/api/process.html#exit-codes',
    );
  }
}
class UnhandledPromiseRejection extends Error {
  constructor(reason, promise) {
    super(reason);
    this.reason = reason;
    this.promise = promise;
  }
}
for (const errorClass of [
  ImportModuleError,
  HandlerNotFound,
  MalformedHandlerName,
  UserCodeSyntaxError,
  NodeJsExit,
  UnhandledPromiseRejection,
]) {
  errorClass.prototype.name = `Runtime.${errorClass.name}`;
}

function isError(obj) {
  return (
    obj &&
    obj.name &&
    obj.message &&
    obj.stack &&
    typeof obj.name === 'string' &&
    typeof obj.message === 'string' &&
    typeof obj.stack === 'string'
  );
}

function intoError(err) {
  return err instanceof Error ? err : new Error(err);
}

/** The error document posted to the Runtime API. */
function toRapidResponse(error) {
  try {
    if (util.types.isNativeError(error) || isError(error)) {
      return {
        errorType: error.name?.replaceAll('\x7F', '%7F'),
        errorMessage: error.message?.replaceAll('\x7F', '%7F'),
        trace: error.stack.replaceAll('\x7F', '%7F').split('\n'),
      };
    }
    return {
      errorType: typeof error,
      errorMessage: error.toString(),
      trace: [],
    };
  } catch (_err) {
    return {
      errorType: 'handled',
      errorMessage:
        'callback called with Error argument, but there was a problem while retrieving one or more of its message, name, and stack',
    };
  }
}

function withEnumerableProperties(value) {
  if (value instanceof Error) {
    const result = Object.assign(
      { errorType: value.name, errorMessage: value.message, code: value.code },
      value,
    );
    if (typeof value.stack === 'string') {
      result.stack = value.stack.split('\n');
    }
    return result;
  }
  return value;
}

/** An error as the text log shows it: a tab, then its JSON. */
function toFormatted(error) {
  try {
    return '\t' + JSON.stringify(error, (_k, v) => withEnumerableProperties(v));
  } catch (_err) {
    return '\t' + JSON.stringify(toRapidResponse(error));
  }
}

// ---------------------------------------------------------------------------------------
// Logs.

const REQUEST_ID = Symbol.for('aws.lambda.runtime.requestId');
const TENANT_ID = Symbol.for('aws.lambda.runtime.tenantId');
const LEVELS = Object.freeze({
  TRACE: { name: 'TRACE', priority: 1 },
  DEBUG: { name: 'DEBUG', priority: 2 },
  INFO: { name: 'INFO', priority: 3 },
  WARN: { name: 'WARN', priority: 4 },
  ERROR: { name: 'ERROR', priority: 5 },
  FATAL: { name: 'FATAL', priority: 6 },
});
const jsonLogFormat = process.env.AWS_LAMBDA_LOG_FORMAT?.toUpperCase() === 'JSON';
const structuredConsole = {};

function jsonErrorReplacer(_key, value) {
  if (value instanceof Error) {
    return Object.assign(
      {
        errorType: value?.constructor?.name ?? 'UnknownError',
        errorMessage: value.message,
        stackTrace: typeof value.stack === 'string' ? value.stack.split('\n') : value.stack,
      },
      value,
    );
  }
  return value;
}

function formatJsonMessage(requestId, timestamp, level, tenantId, ...messageParams) {
  const result = { timestamp, level: level.name, requestId };
  if (tenantId !== undefined && tenantId !== null) {
    result.tenantId = tenantId;
  }
  if (messageParams.length === 1) {
    result.message = messageParams[0];
    try {
      return JSON.stringify(result, jsonErrorReplacer);
    } catch (_) {
      result.message = util.format(result.message);
      return JSON.stringify(result);
    }
  }
  result.message = util.format(...messageParams);
  for (const param of messageParams) {
    if (param instanceof Error) {
      result.errorType = param?.constructor?.name ?? 'UnknownError';
      result.errorMessage = param.message;
      result.stackTrace = typeof param.stack === 'string' ? param.stack.split('\n') : [];
      break;
    }
  }
  return JSON.stringify(result);
}

// Each console call is one frame of the framing AWS's runtime writes to its telemetry
// descriptor (type, big-endian length, big-endian microseconds, message), so it is one log
// event however many lines it has. Lamina reads the frames from the stdout pipe, in order
// with what process.stdout.write prints (pipe writes are synchronous on Linux).
const TEXT_FRAME = 0xa55a0003;
const JSON_FRAME = 0xa55a0002;

function writeFrame(type, text, date) {
  const message = Buffer.from(text, 'utf8');
  const frame = Buffer.allocUnsafe(16 + message.length);
  frame.writeUInt32BE(type, 0);
  frame.writeUInt32BE(message.length, 4);
  frame.writeBigUInt64BE(BigInt(date.valueOf()) * 1000n, 8);
  message.copy(frame, 16);
  process.stdout.write(frame);
}

function logText(level, message, ...params) {
  const date = new Date();
  const line = `${date.toISOString()}\t${globalThis[REQUEST_ID]}\t${level.name}\t${util.format(
    message,
    ...params,
  )}`;
  writeFrame(TEXT_FRAME, line + '\n', date);
}

function logJson(level, message, ...params) {
  const date = new Date();
  const line = formatJsonMessage(
    globalThis[REQUEST_ID],
    date.toISOString(),
    level,
    globalThis[TENANT_ID],
    message,
    ...params,
  );
  writeFrame(JSON_FRAME, line + '\n', date);
}

function patchConsole() {
  const log = jsonLogFormat ? logJson : logText;
  const threshold = LEVELS[process.env.AWS_LAMBDA_LOG_LEVEL?.toUpperCase()] ?? LEVELS.TRACE;
  const noop = () => {};
  const at = (level) =>
    level.priority >= threshold.priority ? (msg, ...params) => log(level, msg, ...params) : noop;
  console.trace = at(LEVELS.TRACE);
  console.debug = at(LEVELS.DEBUG);
  console.info = at(LEVELS.INFO);
  console.log = console.info;
  console.warn = at(LEVELS.WARN);
  console.error = at(LEVELS.ERROR);
  console.fatal = (msg, ...params) => log(LEVELS.FATAL, msg, ...params);
  structuredConsole.logError = jsonLogFormat
    ? (_msg, err) => console.error(intoError(err))
    : (msg, err) => console.error(msg, toFormatted(intoError(err)));
}

// ---------------------------------------------------------------------------------------
// The Runtime API over one keep-alive connection.

class RuntimeApiClient {
  constructor(address) {
    const colon = address.lastIndexOf(':');
    this.host = address.slice(0, colon).replace(/^\[|\]$/g, '');
    this.port = parseInt(address.slice(colon + 1), 10);
    this.hostHeader = address;
    this.socket = null;
    this.buffer = Buffer.alloc(0);
    this.waiting = null;
  }

  _connect() {
    const socket = net.connect({ host: this.host, port: this.port, noDelay: true });
    socket.on('data', (chunk) => {
      this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk;
      this._parse();
    });
    const lost = (error) => {
      if (this.socket === socket) {
        this.socket = null;
        this.buffer = Buffer.alloc(0);
      }
      const waiting = this.waiting;
      this.waiting = null;
      if (waiting) {
        waiting.reject(error || new Error('the Runtime API closed the connection'));
      }
    };
    socket.on('error', lost);
    socket.on('close', () => lost(null));
    this.socket = socket;
  }

  _parse() {
    const waiting = this.waiting;
    if (!waiting) {
      return;
    }
    const end = this.buffer.indexOf('\r\n\r\n');
    if (end < 0) {
      return;
    }
    const lines = this.buffer.toString('latin1', 0, end).split('\r\n');
    const headers = {};
    for (let i = 1; i < lines.length; i++) {
      const colon = lines[i].indexOf(':');
      headers[lines[i].slice(0, colon).trim().toLowerCase()] = lines[i].slice(colon + 1).trim();
    }
    const length = parseInt(headers['content-length'] ?? '0', 10);
    if (this.buffer.length < end + 4 + length) {
      return;
    }
    const body = this.buffer.subarray(end + 4, end + 4 + length);
    this.buffer = this.buffer.subarray(end + 4 + length);
    this.waiting = null;
    // Nothing in flight: the connection must not keep the event loop alive.
    this.socket?.unref();
    waiting.resolve({ status: parseInt(lines[0].slice(9, 12), 10), headers, body });
  }

  _exchange(request, retry = true) {
    return new Promise((resolve, reject) => {
      if (!this.socket) {
        this._connect();
      }
      this.socket.ref();
      this.waiting = {
        resolve,
        reject: (error) => (retry ? this._exchange(request, false).then(resolve, reject) : reject(error)),
      };
      this.socket.write(request);
    });
  }

  _request(method, path, headers, body) {
    const head =
      `${method} ${path} HTTP/1.1\r\nHost: ${this.hostHeader}\r\n${headers}` +
      `Content-Length: ${body ? body.length : 0}\r\n\r\n`;
    return this._exchange(body ? Buffer.concat([Buffer.from(head, 'latin1'), body]) : head);
  }

  async nextInvocation() {
    const response = await this._request('GET', '/2018-06-01/runtime/invocation/next', '', null);
    if (response.status !== 200) {
      throw new Error(`failed to get the next invocation: ${response.status} ${response.body}`);
    }
    return { bodyJson: response.body.toString('utf8'), headers: response.headers };
  }

  _post(path, bodyString, headers, callback) {
    this._request('POST', path, headers, Buffer.from(bodyString, 'utf8')).then(
      (response) => {
        // 413: too large a result; the platform has already told the caller.
        if (response.status !== 202 && response.status !== 413) {
          fatal(new Error(`the Runtime API refused ${path}: ${response.status} ${response.body}`));
        }
        callback?.();
      },
      (error) => fatal(error),
    );
  }

  postInvocationResponse(response, id, callback) {
    const body = trySerializeResponse(response);
    this._post(
      `/2018-06-01/runtime/invocation/${encodeURIComponent(id)}/response`,
      body,
      'Content-Type: application/json\r\n',
      callback,
    );
  }

  postInvocationError(error, id, callback) {
    const response = toRapidResponse(error);
    this._post(
      `/2018-06-01/runtime/invocation/${encodeURIComponent(id)}/error`,
      trySerializeResponse(response),
      `Content-Type: application/json\r\nLambda-Runtime-Function-Error-Type: ${headerSafe(response.errorType)}\r\n`,
      callback,
    );
  }

  postInitError(error, callback) {
    const response = toRapidResponse(error);
    this._post(
      '/2018-06-01/runtime/init/error',
      trySerializeResponse(response),
      `Content-Type: application/json\r\nLambda-Runtime-Function-Error-Type: ${headerSafe(response.errorType)}\r\n`,
      callback,
    );
  }
}

function headerSafe(value) {
  return String(value ?? 'Unhandled').replace(/[^\x20-\x7e]/g, '');
}

function trySerializeResponse(body) {
  try {
    return JSON.stringify(body === undefined ? null : body);
  } catch (_err) {
    throw new Error('Unable to stringify response body');
  }
}

/** The Runtime API cannot be reached: nothing can be reported, so the runtime stops. */
function fatal(error) {
  process.stderr.write(`lamina runtime: ${error?.stack ?? error}\n`);
  process.exit(1);
}

// ---------------------------------------------------------------------------------------
// Loading the handler.

const FUNCTION_EXPR = /^([^.]*)\.(.*)$/;

function moduleRootAndHandler(fullHandlerString) {
  const handlerString = path.basename(fullHandlerString);
  const moduleRoot = fullHandlerString.substring(0, fullHandlerString.indexOf(handlerString));
  return [moduleRoot, handlerString];
}

function splitHandlerString(handler) {
  const match = handler.match(FUNCTION_EXPR);
  if (!match || match.length !== 3) {
    throw new MalformedHandlerName('Bad handler');
  }
  return [match[1], match[2]];
}

function resolveHandler(object, nestedProperty) {
  return nestedProperty.split('.').reduce((nested, key) => nested && nested[key], object);
}

function tryRequireFile(file, extension) {
  const target = file + (extension || '');
  return fs.existsSync(target) ? userRequire(target) : undefined;
}

/**
 * Whether an ES module handler may be loaded with require() rather than import(). The
 * official client imports it; `require(esm)` evaluates the same module (same namespace,
 * same errors: SyntaxError, ERR_MODULE_NOT_FOUND, the module's own exceptions) but
 * synchronously, without the asynchronous half of the ES module loader (fs/promises,
 * readline, the async module job), which is ~7 ms of a cold start. Only where it is on
 * by default and silent (Node.js 20.19+, 22.13+, 23.5+: earlier versions print an
 * ExperimentalWarning) and nothing is preloaded: module customization hooks
 * (`--import`, `--loader`, `module.register()` from a `--require`d file, as tracing
 * agents install) apply to import() only.
 */
const requireEsm = (() => {
  if (process.features.require_module !== true) {
    return false;
  }
  const [major, minor] = process.versions.node.split('.').map(Number);
  const quiet =
    major === 20 ? minor >= 19 : major === 22 ? minor >= 13 : major === 23 ? minor >= 5 : major > 23;
  const options = `${process.env.NODE_OPTIONS ?? ''} ${process.execArgv.join(' ')}`;
  return (
    quiet &&
    !/(^|\s)(-r|--require|--import|--loader|--experimental-loader|--trace-require-module)(=|\s|$)/.test(
      options,
    )
  );
})();

async function tryAwaitImport(file, extension) {
  const target = file + (extension || '');
  if (!fs.existsSync(target)) {
    return undefined;
  }
  if (requireEsm) {
    try {
      return userRequire(target);
    } catch (e) {
      // A graph with top-level await: refused before anything is evaluated.
      if (e?.code !== 'ERR_REQUIRE_ASYNC_MODULE') {
        throw e;
      }
    }
  }
  return await import(target);
}

function folderHasTypeModule(folder) {
  if (folder.endsWith('/node_modules')) {
    return false;
  }
  const packageJson = path.join(folder, '/package.json');
  if (fs.existsSync(packageJson)) {
    try {
      const pkg = JSON.parse(fs.readFileSync(packageJson));
      if (pkg) {
        return pkg.type === 'module';
      }
    } catch (e) {
      console.warn(
        `${packageJson} cannot be read, it will be ignored for ES module detection purposes.`,
        e,
      );
      return false;
    }
  }
  if (folder === '/') {
    return false;
  }
  return folderHasTypeModule(path.resolve(folder, '..'));
}

function hasPackageJsonTypeModule(file) {
  const jsPath = file + '.js';
  return fs.existsSync(jsPath) ? folderHasTypeModule(path.resolve(path.dirname(jsPath))) : false;
}

async function tryRequire(appRoot, moduleRoot, module) {
  const lambdaStylePath = path.resolve(appRoot, moduleRoot, module);
  const extensionless = tryRequireFile(lambdaStylePath);
  if (extensionless) {
    return extensionless;
  }
  const typeModule = hasPackageJsonTypeModule(lambdaStylePath);
  if (!typeModule) {
    const loaded = tryRequireFile(lambdaStylePath, '.js');
    if (loaded) {
      return loaded;
    }
  }
  const loaded =
    (typeModule && (await tryAwaitImport(lambdaStylePath, '.js'))) ||
    (await tryAwaitImport(lambdaStylePath, '.mjs')) ||
    tryRequireFile(lambdaStylePath, '.cjs');
  if (loaded) {
    return loaded;
  }
  // A package (node_modules) or directory, resolved from the task root.
  return userRequire(userRequire.resolve(module, { paths: [appRoot, moduleRoot] }));
}

async function loadUserApp(appRoot, moduleRoot, module) {
  try {
    return await tryRequire(appRoot, moduleRoot, module);
  } catch (e) {
    if (e instanceof SyntaxError) {
      throw new UserCodeSyntaxError(e);
    } else if (e.code !== undefined && e.code === 'MODULE_NOT_FOUND') {
      throw new ImportModuleError(e);
    } else {
      throw e;
    }
  }
}

async function loadHandler(appRoot, fullHandlerString) {
  if (fullHandlerString.includes('..')) {
    throw new MalformedHandlerName(
      `'${fullHandlerString}' is not a valid handler name. Use absolute paths when specifying root directories in handler names.`,
    );
  }
  const [moduleRoot, moduleAndHandler] = moduleRootAndHandler(fullHandlerString);
  const [module, handlerPath] = splitHandlerString(moduleAndHandler);
  const userApp = await loadUserApp(appRoot, moduleRoot, module);
  const handlerFunc = resolveHandler(userApp, handlerPath);
  if (!handlerFunc) {
    throw new HandlerNotFound(`${fullHandlerString} is undefined or not exported`);
  }
  if (typeof handlerFunc !== 'function') {
    throw new HandlerNotFound(`${fullHandlerString} is not a function`);
  }
  return handlerFunc;
}

// ---------------------------------------------------------------------------------------
// Invocations.

const BEFORE_EXIT = Symbol.for('aws.lambda.beforeExit');
const noBeforeExit = () => {};
const beforeExit = {
  invoke: () => globalThis[BEFORE_EXIT](),
  reset: () => (globalThis[BEFORE_EXIT] = noBeforeExit),
  set: (listener) => (globalThis[BEFORE_EXIT] = listener),
};

/** The callback, and the part of the context with succeed/fail/done, for one invocation. */
function buildCallbackContext(client, id, scheduleNext) {
  const postError = (err, callback) => {
    structuredConsole.logError('Invoke Error', err);
    client.postInvocationError(err, id, callback);
  };
  let isCompleteInvoked = false;
  const complete = (result, callback) => {
    if (isCompleteInvoked) {
      console.error(
        'Invocation has already been reported as done. Cannot call complete more than once per invocation.',
      );
      return;
    }
    isCompleteInvoked = true;
    client.postInvocationResponse(result, id, callback);
  };
  let waitForEmptyEventLoop = true;
  const callback = function (err, result) {
    beforeExit.reset();
    if (err !== undefined && err !== null) {
      postError(err, scheduleNext);
    } else if (!waitForEmptyEventLoop) {
      complete(result, scheduleNext);
    } else {
      beforeExit.set(() => setImmediate(() => complete(result, scheduleNext)));
    }
  };
  const done = (err, result) => {
    beforeExit.reset();
    if (err !== undefined && err !== null) {
      postError(err, scheduleNext);
    } else {
      complete(result, scheduleNext);
    }
  };
  const callbackContext = {
    get callbackWaitsForEmptyEventLoop() {
      return waitForEmptyEventLoop;
    },
    set callbackWaitsForEmptyEventLoop(value) {
      waitForEmptyEventLoop = value;
    },
    succeed: (result) => done(null, result),
    fail: (err) => (err === undefined || err === null ? done('handled') : done(err, null)),
    done,
  };
  // Only the first of callback/succeed/fail/done counts.
  let finished = false;
  const once =
    (fn) =>
    (...args) => {
      if (!finished) {
        fn(...args);
        finished = true;
      }
    };
  callbackContext.succeed = once(callbackContext.succeed);
  callbackContext.fail = once(callbackContext.fail);
  callbackContext.done = once(callbackContext.done);
  return [once(callback), callbackContext, () => (isCompleteInvoked = true)];
}

function parseJsonHeader(value, name) {
  if (value === undefined) {
    return undefined;
  }
  try {
    return JSON.parse(value);
  } catch (err) {
    throw new Error(`Cannot parse ${name} as json: ${err.toString()}`);
  }
}

function attachEnvironmentData(headers, callbackContext) {
  const trace = headers['lambda-runtime-trace-id'];
  if (trace) {
    process.env._X_AMZN_TRACE_ID = trace;
  } else {
    delete process.env._X_AMZN_TRACE_ID;
  }
  const deadline = headers['lambda-runtime-deadline-ms'];
  return Object.assign(
    callbackContext,
    {
      functionVersion: process.env.AWS_LAMBDA_FUNCTION_VERSION,
      functionName: process.env.AWS_LAMBDA_FUNCTION_NAME,
      memoryLimitInMB: process.env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
      logGroupName: process.env.AWS_LAMBDA_LOG_GROUP_NAME,
      logStreamName: process.env.AWS_LAMBDA_LOG_STREAM_NAME,
    },
    {
      clientContext: parseJsonHeader(headers['lambda-runtime-client-context'], 'ClientContext'),
      identity: parseJsonHeader(headers['lambda-runtime-cognito-identity'], 'CognitoIdentity'),
      invokedFunctionArn: headers['lambda-runtime-invoked-function-arn'],
      awsRequestId: headers['lambda-runtime-aws-request-id'],
      tenantId: headers['lambda-runtime-aws-tenant-id'],
      getRemainingTimeInMillis: () => deadline - Date.now(),
    },
  );
}

function isPromise(obj) {
  return obj && obj.then && typeof obj.then === 'function';
}

class Runtime {
  constructor(client, handler, errorCallbacks) {
    this.client = client;
    this.handler = handler;
    this.isAsync = handler.constructor?.name === 'AsyncFunction';
    this.errorCallbacks = errorCallbacks;
  }

  scheduleIteration() {
    setImmediate(() => {
      this.handleOnce().then(
        () => {},
        (err) => {
          console.log(`Unexpected Top Level Error: ${err.toString()}`);
          this.errorCallbacks.uncaughtException(err);
        },
      );
    });
  }

  async handleOnce() {
    const { bodyJson, headers } = await this.client.nextInvocation();
    const invokeId = headers['lambda-runtime-aws-request-id'];
    globalThis[REQUEST_ID] = invokeId;
    globalThis[TENANT_ID] = headers['lambda-runtime-aws-tenant-id'];
    const [callback, callbackContext, markCompleted] = buildCallbackContext(
      this.client,
      invokeId,
      this.scheduleIteration.bind(this),
    );
    try {
      this.errorCallbacks.uncaughtException = (error) =>
        this.client.postInvocationError(error, invokeId, () => process.exit(129));
      this.errorCallbacks.unhandledRejection = (error) =>
        this.client.postInvocationError(error, invokeId, () => process.exit(128));
      // The event loop emptied before the function answered.
      beforeExit.set(() => {
        markCompleted();
        if (this.isAsync) {
          const error = new NodeJsExit();
          structuredConsole.logError('Invoke Error', error);
          this.client.postInvocationError(error, invokeId, () => this.scheduleIteration());
        } else {
          this.client.postInvocationResponse(null, invokeId, () => this.scheduleIteration());
        }
      });
      const result = this.handler(
        JSON.parse(bodyJson),
        attachEnvironmentData(headers, callbackContext),
        callback,
      );
      if (isPromise(result)) {
        result.then(callbackContext.succeed, callbackContext.fail).catch(callbackContext.fail);
      }
    } catch (err) {
      callback(err);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Start-up.

async function run() {
  patchConsole();
  const client = new RuntimeApiClient(process.env.AWS_LAMBDA_RUNTIME_API);
  const errorCallbacks = {
    uncaughtException: (error) => client.postInitError(error, () => process.exit(129)),
    unhandledRejection: (error) => client.postInitError(error, () => process.exit(128)),
  };
  process.on('uncaughtException', (error) => {
    structuredConsole.logError('Uncaught Exception', error);
    errorCallbacks.uncaughtException(error);
  });
  process.on('unhandledRejection', (reason, promise) => {
    const error = new UnhandledPromiseRejection(reason, promise);
    structuredConsole.logError('Unhandled Promise Rejection', error);
    errorCallbacks.unhandledRejection(error);
  });
  beforeExit.reset();
  process.on('beforeExit', beforeExit.invoke);

  if (!['1', 'true'].includes(process.env.AWS_LAMBDA_NODEJS_NO_GLOBAL_AWSLAMBDA)) {
    globalThis.awslambda = {
      streamifyResponse: () => {
        throw new Error(
          'Lamina does not support response streaming (awslambda.streamifyResponse) yet; return the whole response from the handler instead',
        );
      },
    };
  }

  let handler;
  try {
    handler = await loadHandler(process.cwd(), process.env._HANDLER ?? '');
    // Init is over (after a failed one the runtime exits).
    restoreV8Flags?.();
  } catch (error) {
    // As the official runtime reports a failed load: an uncaught exception during init.
    structuredConsole.logError('Uncaught Exception', error);
    errorCallbacks.uncaughtException(error);
    return;
  }
  if (
    process.env.AWS_LAMBDA_NODEJS_DISABLE_CALLBACK_WARNING === undefined &&
    handler.length === 3 &&
    handler.constructor?.name !== 'AsyncFunction'
  ) {
    console.warn(
      'AWS Lambda plans to remove support for callback-based function handlers starting with Node.js 24. You will need to update this function to use an async handler to use Node.js 24 or later. For more information and to provide feedback on this change, see https://github.com/aws/aws-lambda-nodejs-runtime-interface-client/issues/137. To disable this warning, set the AWS_LAMBDA_NODEJS_DISABLE_CALLBACK_WARNING environment variable.',
    );
  }
  new Runtime(client, handler, errorCallbacks).scheduleIteration();
}

run().catch(fatal);
