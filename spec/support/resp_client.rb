# frozen_string_literal: true

require "socket"

# A tiny blocking Redis client for the tests' own commands (admin, checks).
# The code under test never uses it.
class RespClient
  class Error < StandardError; end

  # tls: an OpenSSL::SSL::SSLContext for a redis-server with --tls-port.
  def initialize(port: nil, path: nil, timeout: 5, tls: nil)
    @io = @sock = path ? UNIXSocket.new(path) : Socket.tcp("127.0.0.1", port, connect_timeout: timeout)
    @timeout = timeout
    @buf = +""
    start_tls(tls) if tls
  end

  def call(*args)
    @sock.write("*#{args.size}\r\n" + args.map { |a| a = a.to_s; "$#{a.bytesize}\r\n#{a}\r\n" }.join)
    read_reply
  end

  def close
    @sock.close
    @io.close unless @io.closed?
  end

  private

  def start_tls(context)
    require "openssl"
    @sock = OpenSSL::SSL::SSLSocket.new(@io, context)
    @sock.sync_close = true
    loop do
      case @sock.connect_nonblock(exception: false)
      when :wait_readable then raise Error, "TLS handshake timed out" unless @io.wait_readable(@timeout)
      when :wait_writable then raise Error, "TLS handshake timed out" unless @io.wait_writable(@timeout)
      else break
      end
    end
  end

  def ready?
    (@sock.respond_to?(:pending) && @sock.pending.positive?) || @io.wait_readable(@timeout)
  end

  def read_line
    until (i = @buf.index("\r\n"))
      fill
    end
    @buf.slice!(0, i + 2)[0...-2]
  end

  def fill
    raise Error, "Redis did not answer within #{@timeout}s" unless ready?

    @buf << @sock.readpartial(65_536)
  end

  def read_reply
    line = read_line
    case line[0]
    when "+" then line[1..]
    when "-" then raise Error, line[1..]
    when ":" then Integer(line[1..])
    when "$"
      n = Integer(line[1..])
      return nil if n.negative?

      fill while @buf.bytesize < n + 2
      @buf.slice!(0, n + 2)[0, n]
    when "*"
      n = Integer(line[1..])
      n.negative? ? nil : Array.new(n) { read_reply }
    else raise Error, "bad reply #{line.inspect}"
    end
  end
end
