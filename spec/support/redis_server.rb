# frozen_string_literal: true

require "tmpdir"
require "fileutils"

# A real redis-server on a free port, in a temporary directory.
class RedisServer
  include Waiting

  attr_reader :port, :dir

  def initialize(persistence: false, password: nil, unixsocket: false, args: [])
    @args = args
    @persistence = persistence
    @password = password
    @dir = Dir.mktmpdir("spillway-redis")
    @port = free_port
    @unixsocket = unixsocket ? File.join(@dir, "redis.sock") : nil
  end

  def start
    args = ["redis-server", "--port", port.to_s, "--bind", "127.0.0.1", "--dir", dir,
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

  def url(db: 0)
    auth = @password ? ":#{@password}@" : ""
    "redis://#{auth}127.0.0.1:#{port}/#{db}"
  end

  def unix_url
    "unix://#{@password ? ":#{@password}@" : ''}#{@unixsocket}"
  end

  def ping
    client = RespClient.new(port: port, timeout: 1)
    client.call("AUTH", @password) if @password
    client.call("PING") == "PONG"
  rescue SystemCallError, RespClient::Error, IOError
    false
  ensure
    client&.close
  end

  def call(*args)
    client = RespClient.new(port: port)
    client.call("AUTH", @password) if @password
    client.call(*args)
  ensure
    client&.close
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
