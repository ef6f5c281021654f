# frozen_string_literal: true

require "tmpdir"
require "fileutils"
require "open3"

# A real PostgreSQL (Debian's postgresql package) on a free port, in a
# temporary directory: initdb'ed there, its unix socket there too, trust
# authentication on 127.0.0.1. initdb and postgres refuse to run as root,
# so as root the suite runs them as the postgres user (runuser). Stopped by
# the postmaster's pid.
class PostgresServer
  include Waiting

  BIN = ENV.fetch("SPILLWAY_PG_BIN", "/usr/lib/postgresql/15/bin")

  attr_reader :port, :dir

  def self.available?
    File.executable?(File.join(BIN, "initdb")) && File.executable?(File.join(BIN, "postgres")) &&
      (Process.uid != 0 || system("id", "postgres", out: File::NULL, err: File::NULL))
  end

  def initialize
    @dir = Dir.mktmpdir("spillway-pg")
    @data = File.join(@dir, "data")
    @port = free_port
    FileUtils.chown("postgres", "postgres", @dir) if root?
    as_owner(File.join(BIN, "initdb"), "-D", @data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--locale=C", "-N")
  end

  def root?
    Process.uid.zero?
  end

  def as_owner(*cmd, spawn: false)
    cmd = ["runuser", "-u", "postgres", "--", *cmd] if root?
    return Process.spawn(*cmd, out: File::NULL, err: File.join(@dir, "postgres.log"), pgroup: true) if spawn

    out, status = Open3.capture2e(*cmd)
    raise "#{cmd.join(' ')} failed: #{out}" unless status.success?

    out
  end

  def start
    @pid = as_owner(File.join(BIN, "postgres"), "-D", @data, "-p", port.to_s, "-k", @dir,
                    "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                    "-c", "full_page_writes=off", "-c", "max_connections=100", spawn: true)
    wait_until(timeout: 30, message: "postgres on #{port}") { ready? }
    self
  end

  def url
    "postgres://postgres@127.0.0.1:#{port}/postgres"
  end

  def ready?
    _, status = Open3.capture2e("psql", "-h", "127.0.0.1", "-p", port.to_s, "-U", "postgres", "-d", "postgres",
                                "-Atc", "SELECT 1")
    status.success?
  end

  # Runs SQL, returns the rows (| separated columns, one line each).
  def sql(text)
    out, err, status = Open3.capture3("psql", "-h", "127.0.0.1", "-p", port.to_s, "-U", "postgres", "-d",
                                      "postgres", "-v", "ON_ERROR_STOP=1", "-Atc", text)
    raise "psql: #{err}" unless status.success?

    out.lines.map(&:chomp)
  end

  # Kills the LISTEN connections of every hub (their application_name).
  def terminate_listeners
    sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'spillway'")
      .first.to_i
  end

  def postmaster_pid
    Integer(File.read(File.join(@data, "postmaster.pid")).lines.first)
  rescue Errno::ENOENT, ArgumentError
    nil
  end

  # SIGINT: a fast shutdown (every connection is terminated).
  def stop(signal = "INT")
    return unless @pid

    pm = postmaster_pid
    Process.kill(signal, pm) if pm
    Process.wait(@pid)
    wait_until(timeout: 30, message: "postgres gone") { postmaster_pid.nil? } if signal != "KILL"
    @pid = nil
  rescue Errno::ESRCH, Errno::ECHILD
    @pid = nil
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
