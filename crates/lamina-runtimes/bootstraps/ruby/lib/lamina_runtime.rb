# frozen_string_literal: true

# Lamina's runtime for Ruby functions: the loop between the Lambda Runtime API and the
# function's handler, behaving as AWS's aws_lambda_ric gem does.
#
# Lamina starts it as `/var/lang/bin/ruby /var/runtime/lib/lamina_runtime.rb` in the task
# root, with GEM_PATH and RUBYLIB as AWS sets them.
#
# - `_HANDLER` is `file.method` or `file.Class.method`: the task root leads $LOAD_PATH,
#   `file` is required once at init, and the method is called with `event:` and
#   `context:` keywords for each invocation (top-level methods through `__send__`, as the
#   official client calls them). A failed require or an exception at init answers
#   `Init<ErrorClass>` through /runtime/init/error and the process exits.
# - errors answer {"errorMessage", "errorType": "Function<ErrorClass>", "stackTrace"},
#   the runtime's own frames cut, and are logged as the official client logs them (a line,
#   then the document as pretty JSON); a NoMethodError or NameError from the handler ends
#   the environment after answering, as there.
# - results are `to_json`ed; a StringIO or IO is answered raw.
# - logs as the official client writes them to its telemetry descriptor: each
#   `Kernel#puts` call is one log event (its arguments joined by newlines), and a `Logger`
#   on $stdout or $stderr (or none) writes through Lambda's formatter
#   (`I, [TIME #PID]  INFO REQUEST_ID -- PROGNAME: message`), each entry one event. Events
#   travel as frames of AWS's telemetry framing in the stdout pipe (LaminaLogFrames);
#   `$stdout.puts`/`print` write plain lines, and errors the runtime reports are written to
#   stderr as lines, as the official client writes them.
# - with LoggingConfig LogFormat=JSON (AWS_LAMBDA_LOG_FORMAT=JSON), as the official client's
#   structured logging (its pull request #58) does on the Logger path only: those Loggers
#   write `{"timestamp","level","message","requestId"}` records and start at
#   AWS_LAMBDA_LOG_LEVEL (TRACE is DEBUG here) unless created with a `level:`; `puts` and
#   the runtime's own error reports stay text.
#
# It speaks HTTP/1.1 to the Runtime API over one keep-alive TCP connection by hand:
# net/http costs tens of milliseconds of require at a cold start.

require 'json'
require 'logger'
require 'socket'
require 'stringio'

$stdout.sync = true
$stderr.sync = true

# One log event per record, however many lines it has: a frame as AWS's runtimes write
# them to their telemetry descriptor (type, big-endian length, big-endian microseconds,
# message), which Lamina reads from the stdout pipe between the lines printed there.
module LaminaLogFrames
  TEXT_FRAME = 0xa55a0003
  JSON_FRAME = 0xa55a0002

  # Also a log device for Logger (write/close).
  def self.write(message, type = TEXT_FRAME)
    data = message.to_s.encode('UTF-8', invalid: :replace, undef: :replace).b
    micros = Process.clock_gettime(Process::CLOCK_REALTIME, :microsecond)
    STDOUT.write([type, data.bytesize, micros].pack('NNQ>') + data)
    data.bytesize
  end

  def self.close; end

  # The log device of Loggers under LogFormat=JSON: their records, framed as JSON.
  module Json
    def self.write(message)
      LaminaLogFrames.write(message, JSON_FRAME)
    end

    def self.close; end
  end
end

# LoggingConfig as the environment carries it: the format, and under JSON the level a
# Logger starts at (Lambda's TRACE has no Logger level; DEBUG is the nearest).
module LaminaLogConfig
  JSON_FORMAT = ENV['AWS_LAMBDA_LOG_FORMAT'].to_s.casecmp?('JSON')
  LEVEL = if JSON_FORMAT
            { 'TRACE' => Logger::DEBUG, 'DEBUG' => Logger::DEBUG, 'INFO' => Logger::INFO, 'WARN' => Logger::WARN,
              'ERROR' => Logger::ERROR, 'FATAL' => Logger::FATAL }[ENV['AWS_LAMBDA_LOG_LEVEL'].to_s.upcase]
          end
end

# Lambda's Logger format, as the official client's formatter writes it.
class LaminaLogFormatter < Logger::Formatter
  FORMAT = '%<sev>s, [%<datetime>s #%<process>d] %<severity>5s %<request_id>s -- %<progname>s: %<msg>s'

  def call(severity, time, progname, msg)
    (FORMAT % { sev: severity[0..0], datetime: format_datetime(time), process: $$, severity: severity,
                request_id: $_global_aws_request_id, progname: progname, msg: msg2str(msg) }).encode!('UTF-8')
  end
end

# Under LogFormat=JSON: one JSON record per entry, the fields of the official client's
# structured logging (the message as Logger renders it, exceptions with their backtrace).
class LaminaJsonLogFormatter < Logger::Formatter
  def call(severity, time, _progname, msg)
    record = { 'timestamp' => time.getutc.strftime('%Y-%m-%dT%H:%M:%S.%LZ'), 'level' => severity,
               'message' => msg2str(msg).to_s.encode('UTF-8', invalid: :replace, undef: :replace) }
    record['requestId'] = $_global_aws_request_id if $_global_aws_request_id
    "#{JSON.generate(record)}\n"
  end
end

# Loggers of $stdout or $stderr (or of nothing) write framed entries in Lambda's format;
# others (files, other IO) are left alone, as the official client leaves them.
module LaminaLoggerPatch
  def initialize(logdev = nil, *args, **kwargs)
    if logdev.nil? || logdev == $stdout || logdev == $stderr || logdev == STDOUT || logdev == STDERR
      if LaminaLogConfig::JSON_FORMAT
        kwargs[:level] = LaminaLogConfig::LEVEL if LaminaLogConfig::LEVEL && !kwargs.key?(:level)
        super(LaminaLogFrames::Json, *args, **kwargs)
        @default_formatter = LaminaJsonLogFormatter.new
      else
        super(LaminaLogFrames, *args, **kwargs)
        # The default, so that a formatter the function sets still wins.
        @default_formatter = LaminaLogFormatter.new
      end
    else
      super(logdev, *args, **kwargs)
    end
  end
end
Logger.prepend(LaminaLoggerPatch)

module Kernel
  private

  def puts(*args)
    LaminaLogFrames.write(args.flatten.collect { |a| a.to_s.encode('UTF-8') }.join("\n"))
    nil
  end
end

module LambdaErrors
  # An error as the official client reports it.
  class LambdaError < StandardError
    STANDARD = %w[ArgumentError NoMethodError Exception StandardError NameError LoadError SystemExit
                  SystemStackError].freeze

    def initialize(original_error, classification = 'Function')
      @error_class = original_error.class.to_s
      @error_type = "#{classification}<#{original_error.class}>"
      @error_message = original_error.message
      @stack_trace = sanitize(original_error.backtrace_locations)
      super(original_error)
    end

    def runtime_error_type
      STANDARD.include?(@error_class) ? @error_type : 'Function<UserException>'
    end

    def to_lambda_response
      { errorMessage: @error_message, errorType: @error_type, stackTrace: @stack_trace }
    end

    private

    # The frames up to the first of the runtime's own.
    def sanitize(locations)
      return [] unless locations

      own = "#{__dir__}/"
      locations.first(100).map(&:to_s).take_while { |line| !line.start_with?(own) }
    end
  end

  class LambdaHandlerError < LambdaError; end
  class LambdaHandlerCriticalException < LambdaError; end

  class LambdaRuntimeInitError < LambdaError
    def initialize(original_error)
      super(original_error, 'Init')
    end
  end
end

# The context, with the official client's readers.
class LambdaContext
  attr_reader :aws_request_id, :invoked_function_arn, :log_group_name, :log_stream_name, :function_name,
              :memory_limit_in_mb, :function_version, :identity, :tenant_id, :client_context, :deadline_ms

  def initialize(headers)
    @deadline_ms = headers['lambda-runtime-deadline-ms'].to_i
    @aws_request_id = headers['lambda-runtime-aws-request-id']
    @invoked_function_arn = headers['lambda-runtime-invoked-function-arn']
    @log_group_name = ENV['AWS_LAMBDA_LOG_GROUP_NAME']
    @log_stream_name = ENV['AWS_LAMBDA_LOG_STREAM_NAME']
    @function_name = ENV['AWS_LAMBDA_FUNCTION_NAME']
    @memory_limit_in_mb = ENV['AWS_LAMBDA_FUNCTION_MEMORY_SIZE']
    @function_version = ENV['AWS_LAMBDA_FUNCTION_VERSION']
    identity = headers['lambda-runtime-cognito-identity'].to_s
    @identity = JSON.parse(identity) unless identity.empty?
    tenant = headers['lambda-runtime-aws-tenant-id'].to_s
    @tenant_id = tenant unless tenant.empty?
    client_context = headers['lambda-runtime-client-context'].to_s
    @client_context = JSON.parse(client_context) unless client_context.empty?
  end

  def get_remaining_time_in_millis
    remaining = @deadline_ms - Process.clock_gettime(Process::CLOCK_REALTIME, :millisecond)
    remaining.positive? ? remaining : 0
  end
end

# Calls the user's handler; `self` is where top-level methods are found.
class LambdaHandler
  attr_reader :handler_file_name, :handler_method_name

  def initialize(env_handler:)
    handler_split = env_handler.split('.')
    if handler_split.size == 2
      @handler_file_name, @handler_method_name = handler_split
    elsif handler_split.size == 3
      @handler_file_name, @handler_class, @handler_method_name = handler_split
    else
      raise ArgumentError, "Invalid handler #{handler_split}, must be of form FILENAME.METHOD or FILENAME.CLASS.METHOD where FILENAME corresponds with an existing Ruby source file FILENAME.rb, CLASS is an optional module/class namespace and METHOD is a callable method. If using CLASS, METHOD must be a class-level method."
    end
  end

  def call_handler(request:, context:)
    opts = { event: request, context: context }
    response = if @handler_class
                 Kernel.const_get(@handler_class).send(@handler_method_name, **opts)
               else
                 __send__(@handler_method_name, **opts)
               end
    case response
    when StringIO, IO then [response.read, 'application/unknown']
    else [response.to_json, 'application/json']
    end
  rescue NoMethodError, NameError => e
    raise LambdaErrors::LambdaHandlerCriticalException, e
  rescue StandardError => e
    raise LambdaErrors::LambdaHandlerError, e
  rescue Exception => e # rubocop:disable Lint/RescueException
    raise LambdaErrors::LambdaHandlerCriticalException, e
  end
end

# The Runtime API over one keep-alive connection.
class RuntimeApiClient
  def initialize(address)
    @host, _, port = address.rpartition(':')
    @host = @host.delete('[]')
    @port = port.to_i
    @host_header = address
    @socket = nil
  end

  def next_invocation
    status, headers, body = exchange('GET', '/2018-06-01/runtime/invocation/next', nil, {})
    raise "Received #{status} when waiting for next invocation." unless status == 200

    [headers, body]
  end

  def send_response(request_id, body, content_type)
    post("/2018-06-01/runtime/invocation/#{request_id}/response", body, 'Content-Type' => content_type)
  end

  def send_error(request_id, error)
    post("/2018-06-01/runtime/invocation/#{request_id}/error", error.to_lambda_response.to_json,
         'Lambda-Runtime-Function-Error-Type' => error.runtime_error_type)
  end

  def send_init_error(error)
    post('/2018-06-01/runtime/init/error', error.to_lambda_response.to_json,
         'Lambda-Runtime-Function-Error-Type' => error.runtime_error_type)
  end

  private

  def post(path, body, headers)
    status, = exchange('POST', path, body.to_s.b, headers)
    # 413: too large a result; the platform has already told the caller.
    raise "the Runtime API answered #{status} to #{path}" unless [202, 413].include?(status)
  end

  def exchange(method, path, body, headers)
    attempt(method, path, body, headers)
  rescue IOError, SystemCallError
    @socket&.close
    @socket = nil
    attempt(method, path, body, headers)
  end

  def attempt(method, path, body, headers)
    unless @socket
      @socket = TCPSocket.new(@host, @port)
      @socket.setsockopt(Socket::IPPROTO_TCP, Socket::TCP_NODELAY, 1)
    end
    head = +"#{method} #{path} HTTP/1.1\r\nHost: #{@host_header}\r\n"
    headers.each { |k, v| head << "#{k}: #{v}\r\n" }
    head << "Content-Length: #{body.bytesize}\r\n" if body
    head << "\r\n"
    @socket.write(body ? head.b + body : head)
    read_response
  end

  def read_response
    status_line = @socket.gets("\r\n") or raise IOError, 'the Runtime API closed the connection'
    status = status_line[9, 3].to_i
    headers = {}
    while (line = @socket.gets("\r\n")) && line != "\r\n"
      name, value = line.split(':', 2)
      headers[name.strip.downcase] = value.to_s.strip
    end
    body = if headers['transfer-encoding'].to_s.casecmp?('chunked')
             read_chunked
           else
             length = headers['content-length'].to_i
             length.positive? ? @socket.read(length) : +''
           end
    if headers['connection'].to_s.casecmp?('close')
      @socket.close
      @socket = nil
    end
    [status, headers, body.force_encoding(Encoding::UTF_8)]
  end

  def read_chunked
    body = +''
    loop do
      size = @socket.gets("\r\n").to_i(16)
      if size.zero?
        nil while @socket.gets("\r\n") != "\r\n"
        return body
      end
      body << @socket.read(size)
      @socket.read(2)
    end
  end
end

# The loop, as the official client's LambdaRunner.
class LambdaRunner
  def initialize(client)
    @client = client
    @active = true
    @exit_code = 0
  end

  def run(app_root, handler)
    $LOAD_PATH.unshift(app_root) unless $LOAD_PATH.include?(app_root)
    begin
      @handler = LambdaHandler.new(env_handler: handler)
      require @handler.handler_file_name
      loop_invocations
    rescue Exception => e # rubocop:disable Lint/RescueException
      @active = false
      @exit_code = -4
      init_error(e)
    end
    exit(@exit_code)
  end

  private

  def loop_invocations
    run_once while @active
  end

  def run_once
    headers, body = @client.next_invocation
    request_id = headers['lambda-runtime-aws-request-id']
    $_global_aws_request_id = request_id
    if (trace_id = headers['lambda-runtime-trace-id'])
      ENV['_X_AMZN_TRACE_ID'] = trace_id
    end
    content_type = headers['content-type']
    request = content_type.nil? || content_type == 'application/json' ? JSON.parse(body) : body
    begin
      response, type = @handler.call_handler(request: request, context: LambdaContext.new(headers))
      @client.send_response(request_id, response, type)
    rescue LambdaErrors::LambdaHandlerError => e
      log_error(e, 'Error raised from handler method')
      @client.send_error(request_id, e)
    rescue LambdaErrors::LambdaHandlerCriticalException => e
      log_error(e, 'Critical exception from handler')
      @client.send_error(request_id, e)
      @exit_code = -1
      @active = false
    end
  end

  def init_error(error)
    wrapped = LambdaErrors::LambdaRuntimeInitError.new(error)
    # The official client names an unset variable here, so the handler never shows.
    log_error(wrapped, 'Init error when loading handler ')
    @client.send_init_error(wrapped)
  end

  def log_error(error, message)
    $stderr.puts message
    $stderr.puts JSON.pretty_unparse(error.to_lambda_response)
  end
end

handler = ENV['_HANDLER']
if handler.nil?
  puts 'No handler specified, exiting Runtime Interface Client.'
  exit
end
LambdaRunner.new(RuntimeApiClient.new(ENV.fetch('AWS_LAMBDA_RUNTIME_API'))).run(Dir.pwd, handler)
