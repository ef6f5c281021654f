# frozen_string_literal: true

require "tmpdir"
require "fileutils"

# A real redis-server on a free port, in a temporary directory.
class RedisServer
  include Waiting

  attr_reader :port, :dir

  # tls: { pki: SelfSigned.pki, auth_clients: false, cert: :server } runs a
  # TLS-only server (plaintext port off) with pki's "#{cert}_cert" and key;
  # the suite's own commands connect with the client certificate.
  def initialize(persistence: false, password: nil, unixsocket: false, args: [], tls: nil, port: nil)
    @args = args
    @tls = tls
    @persistence = persistence
    @password = password
    @dir = Dir.mktmpdir("spillway-redis")
    @port = port || free_port
    @unixsocket = unixsocket ? File.join(@dir, "redis.sock") : nil
  end

  def start
    args = ["redis-server", *listen_args, "--bind", "127.0.0.1", "--dir", dir,
            "--logfile", File.join(dir, "redis.log"), "--daemonize", "no", "--protected-mode", "no"]
    args += @persistence ? ["--appendonly", "yes", "--appendfsync", "always", "--save", ""] : ["--save", "", "--appendonly", "no"]
    args += ["--requirepass", @password] if @password
    args += ["--unixsocket", @unixsocket, "--unixsocketperm", "700"] if @unixsocket
    args += @args
    @pid = Process.spawn(*args, out: File::NULL, err: File::NULL)
    # A restart may spend a while LOADING its AOF (the fault suite makes it).
    wait_until(timeout: 30, message: "redis-server on #{port}") { ping }
    self
  end

  def url(db: 0, host: "127.0.0.1")
    auth = @password ? ":#{@password}@" : ""
    "#{@tls ? 'rediss' : 'redis'}://#{auth}#{host}:#{port}/#{db}"
  end

  def tls?
    !@tls.nil?
  end

  # For the suite's own clients: the client certificate, no verification.
  def client_tls_context
    return nil unless @tls

    require "openssl"
    ctx = OpenSSL::SSL::SSLContext.new
    ctx.verify_mode = OpenSSL::SSL::VERIFY_NONE
    ctx.cert = OpenSSL::X509::Certificate.new(File.read(@tls[:pki][:client_cert]))
    ctx.key = OpenSSL::PKey.read(File.read(@tls[:pki][:client_key]))
    ctx
  end

  def unix_url
    "unix://#{@password ? ":#{@password}@" : ''}#{@unixsocket}"
  end

  def ping
    client = RespClient.new(port: port, timeout: 1, tls: client_tls_context)
    client.call("AUTH", @password) if @password
    client.call("PING") == "PONG"
  rescue SystemCallError, RespClient::Error, IOError, OpenSSL::SSL::SSLError
    false
  ensure
    client&.close
  end

  def call(*args)
    client = RespClient.new(port: port, tls: client_tls_context)
    client.call("AUTH", @password) if @password
    client.call(*args)
  ensure
    client&.close
  end

  def listen_args
    return ["--port", port.to_s] unless @tls

    pki = @tls[:pki]
    cert = @tls.fetch(:cert, :server)
    ["--port", "0", "--tls-port", port.to_s, "--tls-cert-file", pki[:"#{cert}_cert"],
     "--tls-key-file", pki[:"#{cert}_key"], "--tls-ca-cert-file", pki[:ca],
     "--tls-auth-clients", @tls[:auth_clients] ? "yes" : "no"]
  end

  def stop(signal = "TERM")
    return unless @pid

    Process.kill(signal, @pid)
    Process.wait(@pid)
    @pid = nil
  rescue Errno::ESRCH, Errno::ECHILD
    @pid = nil
  end

  def kill
    stop("KILL")
  end

  # SIGSTOP: connections stay open and the kernel still accepts, but
  # nothing is answered (a Redis stuck in a long command or a swap storm).
  def pause
    Process.kill("STOP", @pid) if @pid
  end

  def resume
    Process.kill("CONT", @pid) if @pid
  end

  def restart
    stop
    start
  end

  def running?
    !@pid.nil?
  end

  def cleanup
    stop
    FileUtils.rm_rf(dir)
  end
end
