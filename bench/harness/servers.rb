# frozen_string_literal: true

# Part of bench/run.rb: the systems under test (one fresh process per
# workload) and the Redis each one gets.

# A running system under test.
Server = Struct.new(:name, :pid, :port, :pub_port, :redis, :pg, :pub_mode, :lg_mode, :threads, :log, :dir,
                    keyword_init: true) do
  def sub_url(channel)
    case lg_mode
    when "mb", "mb-lp" then "http://127.0.0.1:#{port}/message-bus"
    when "lp" then "http://127.0.0.1:#{port}/stream?channel=#{channel}&transport=long-poll"
    else "http://127.0.0.1:#{port}#{name == 'ceiling' || name.start_with?('nchan') ? '/sub' : '/stream'}?channel=#{channel}"
    end
  end

  def pub_url(channel)
    "http://127.0.0.1:#{pub_port || port}/pub?channel=#{channel}"
  end

  # loadgen arguments that pick the protocol for this system. A long-poll
  # starts from the server's cursor of now: the loadgen counts a poll as
  # connected once its request is out, and whatever is published before the
  # server holds it is then answered from the backlog, not missed.
  def lg_args(channel)
    case lg_mode
    when "mb", "mb-lp" then ["-m", lg_mode, "-C", "/#{channel}"]
    when "lp" then ["-m", "lp", "-I", http_get(port, "/cursor").strip]
    else ["-m", "sse"]
    end
  end
end

# The body of a GET to the server on port (raises unless 200).
def http_get(port, path, timeout: 10)
  res = Net::HTTP.start("127.0.0.1", port, open_timeout: timeout, read_timeout: timeout) { |h| h.get(path) }
  raise "GET #{path}: #{res.code} #{res.body.to_s[0, 200]}" unless res.code == "200"

  res.body
end

def http_post(port, path, timeout: 120)
  res = Net::HTTP.start("127.0.0.1", port, open_timeout: 10, read_timeout: timeout) { |h| h.post(path, "") }
  raise "POST #{path}: #{res.code} #{res.body.to_s[0, 200]}" unless res.code == "200"

  res.body
end

# A PostgreSQL of Debian's package for one server: initdb'ed in a temporary
# directory of its own (removed when it stops), trust authentication on 127.0.0.1, durability off
# (fsync, synchronous_commit: like the bench's Redis, which saves nothing).
# initdb and postgres refuse root, so as root they run as the postgres user.
class Postgres
  BIN = ENV.fetch("SPILLWAY_PG_BIN", "/usr/lib/postgresql/15/bin")
  attr_reader :pid, :port, :url

  def self.available?
    File.executable?(File.join(BIN, "postgres")) && (Process.uid != 0 || system("id", "-u", "postgres", out: File::NULL))
  end

  # Its own temporary directory, not one below the run's (mode 0700, owned
  # by whoever runs the bench, which the postgres user could not enter).
  def initialize(_run_dir)
    @port = free_port
    @dir = Dir.mktmpdir("spillway-bench-pg-")
    FileUtils.chown("postgres", "postgres", @dir) if Process.uid.zero?
    owner = Process.uid.zero? ? %w[runuser -u postgres --] : []
    log = File.join(@dir, "log")
    system(*owner, File.join(BIN, "initdb"), "-D", "#{@dir}/data", "-U", "postgres", "--auth=trust", "-N",
           out: log, err: [:child, :out]) or raise "initdb failed (#{log})"
    @pid = Process.spawn(*owner, File.join(BIN, "postgres"), "-D", "#{@dir}/data", "-p", @port.to_s, "-k", @dir,
                         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                         "-c", "full_page_writes=off", out: [log, "a"], err: [:child, :out])
    @url = "postgres://postgres@127.0.0.1:#{@port}/postgres"
    wait_until("postgres on #{@port}", 30) { port_open?(@port) }
  end

  # SIGINT to the postmaster (its pid file names it; runuser is its parent):
  # a fast shutdown, which does not wait for connections to end.
  def stop
    pm = Integer(File.read("#{@dir}/data/postmaster.pid").lines.first, exception: false)
    Process.kill("INT", pm) if pm
    stop_process(@pid, grace: 10)
  rescue Errno::ENOENT, Errno::ESRCH
    stop_process(@pid, grace: 10)
  ensure
    FileUtils.rm_rf(@dir)
  end
end

class Redis
  attr_reader :pid, :port, :url

  def initialize(dir)
    @port = free_port
    @dir = File.join(dir, "redis-#{@port}")
    FileUtils.mkdir_p(@dir)
    # No persistence; no output-buffer limit for pub/sub clients: the benchmark
    # measures fan-out, and Redis's default (32 MB) would cut slow subscribers
    # of the Live-style peer in the middle of a burst.
    @pid = Process.spawn("redis-server", "--port", @port.to_s, "--bind", "127.0.0.1", "--save", "",
                         "--appendonly", "no", "--dir", @dir, "--maxclients", "19000",
                         "--client-output-buffer-limit", "pubsub 0 0 0", "--daemonize", "no",
                         out: File.join(@dir, "log"), err: [:child, :out], rlimit_nofile: [NOFILE, NOFILE])
    @url = "redis://127.0.0.1:#{@port}"
    wait_until("redis on #{@port}", 10) { port_open?(@port) }
  end

  def stop
    stop_process(@pid)
  end
end

def ruby_env(redis, pg = nil)
  env = { "BUNDLE_GEMFILE" => GEMFILE, "RACK_ENV" => "production", "REDIS_URL" => nil, "POSTGRES_URL" => nil,
          "SPILLWAY_POSTGRES_URL" => nil, "MB_MAX_ACTIVE_CLIENTS" => "20000" }
  env["REDIS_URL"] = redis.url if redis
  env["POSTGRES_URL"] = pg.url if pg
  env
end

# Puma's listen backlog, unless a run asks for more (the kernel caps it at
# net.core.somaxconn).
PUMA_BACKLOG = 4096

def puma_cmd(port, threads, extra = [], backlog: PUMA_BACKLOG)
  ["bundle", "exec", "puma", "-e", "production", "-t", threads, "-b", "tcp://127.0.0.1:#{port}?backlog=#{backlog}",
   *extra, "config.ru"]
end

# workers: Puma's cluster mode with that many worker processes (the Spillway
# peers only); backlog: Puma's listen backlog.
def start_server(name, opts, tmp, workers: nil, backlog: PUMA_BACKLOG)
  port = free_port
  dir = File.join(tmp, "#{name}-#{port}")
  FileUtils.mkdir_p(dir)
  logf = File.join(dir, "server.log")
  redis = nil
  pg = nil
  kind = name.delete_suffix("-lp") # the -lp systems: the same server, long-poll clients
  redis = Redis.new(tmp) if %w[nchan-redis live message_bus spillway].include?(kind)
  pg = Postgres.new(tmp) if kind == "spillway-pg"
  pub_port = name == "live" ? free_port : nil
  spawn_opts = { out: logf, err: [:child, :out], rlimit_nofile: [NOFILE, NOFILE], pgroup: true }
  pid, pub_mode, lg_mode, threads =
    case kind
    when "ceiling"
      [Process.spawn(File.join(BENCH, "ceiling"), port.to_s, **spawn_opts), "raw", "sse", 1]
    when "nchan", "nchan-redis"
      conf = ERB.new(File.read(File.join(BENCH, "peers/nchan/nginx.conf.erb")), trim_mode: "<>")
               .result_with_hash(dir: dir, port: port, redis_url: redis&.url)
      File.write(File.join(dir, "nginx.conf"), conf)
      # master_process off: the spawned pid is the one process holding the streams
      [Process.spawn("nginx", "-p", dir, "-c", File.join(dir, "nginx.conf"), "-e", File.join(dir, "error.log"),
                     **spawn_opts), "raw", "sse", 1]
    when "live"
      [Process.spawn(ruby_env(redis).merge("LIVE_PUB_PORT" => pub_port.to_s), *puma_cmd(port, "0:#{opts.live_threads}"),
                     chdir: File.join(BENCH, "peers/live"), **spawn_opts), "app", "sse", opts.live_threads]
    when "message_bus"
      [Process.spawn(ruby_env(redis), *puma_cmd(port, "1:1"),
                     chdir: File.join(BENCH, "peers/message_bus"), **spawn_opts), "app",
       name.end_with?("-lp") ? "mb-lp" : "mb", 1]
    when "spillway", "spillway-memory", "spillway-pg"
      cluster = workers ? ["-w", workers.to_s] : []
      [Process.spawn(ruby_env(redis, pg), *puma_cmd(port, "1:1", ["-I", spillway_lib(opts, tmp), *cluster], backlog: backlog),
                     chdir: File.join(BENCH, "peers/spillway"), **spawn_opts), "app",
       name.end_with?("-lp") ? "lp" : "sse", 1]
    end
  srv = Server.new(name: name, pid: pid, port: port, pub_port: pub_port, redis: redis, pg: pg, pub_mode: pub_mode,
                   lg_mode: lg_mode, threads: threads, log: logf, dir: dir)
  begin
    wait_until("#{name} to listen on #{port}", 60) do
      raise "#{name} exited at start: #{File.read(logf).lines.last(5).join}" unless alive?(pid)

      port_open?(port) && (pub_port.nil? || port_open?(pub_port))
    end
  rescue StandardError
    stop_server(srv)
    raise
  end
  srv
end

def stop_server(srv)
  return unless srv

  stop_process(srv.pid, grace: 3)
  srv.redis&.stop
  srv.pg&.stop
end

def with_server(name, opts, tmp, **kw)
  srv = start_server(name, opts, tmp, **kw)
  yield srv
ensure
  stop_server(srv)
end

# ---------- tools ----------

def loadgen(args, tmp, stdin: false)
  Tool.new([File.join(BENCH, "loadgen"), "-q", *args], File.join(tmp, "loadgen.log"), stdin: stdin)
end

def pubgen(srv, channel, n:, k: 1, rate: 0, size: 0, first_seq: 1, deadline: 600)
  args = [File.join(BENCH, "pubgen"), "-m", srv.pub_mode, "-n", n.to_s, "-k", k.to_s, "-R", rate.to_s,
          "-s", size.to_s, "-S", first_seq.to_s, "-t", deadline.to_s, srv.pub_url(channel)]
  out = IO.popen(args, err: [File.join(File.dirname(srv.log), "pubgen.log"), "a"], &:read)
  JSON.parse(out.lines.last || "{}")
end

def warm_up(srv, opts)
  # One publish on a channel nobody listens to: loads the code paths (and, for
  # Ruby, the constants) before the baseline is taken.
  pubgen(srv, "warmup", n: 1, size: opts.size, deadline: 30)
end

# Where the Spillway peer loads the gem from: the working tree's lib/ (with
# whatever spillway_ext.so was last compiled there), or with --spillway-rev
# a copy of ext/ and lib/ at that git revision, built once per run into the
# temporary directory, so that what is measured is a known commit and not
# someone's half-finished edit or a sanitizer build.
def spillway_lib(opts, tmp)
  return File.join(ROOT, "lib") unless opts.spillway_rev

  @spillway_lib ||= begin
    sha = IO.popen(["git", "-C", ROOT, "rev-parse", "--verify", "#{opts.spillway_rev}^{commit}"], &:read).strip
    raise "--spillway-rev #{opts.spillway_rev}: not a commit" unless $?.success?

    dir = File.join(tmp, "spillway-#{sha[0, 12]}")
    FileUtils.mkdir_p(dir)
    log "building spillway at #{sha[0, 12]} into #{dir}"
    system("sh", "-c", "git -C \"$1\" archive \"$2\" ext lib | tar -x -C \"$3\"", "sh", ROOT, sha, dir) or
      raise "git archive #{sha} failed"
    ext = File.join(dir, "ext", "spillway")
    logf = File.join(dir, "build.log")
    (system(RbConfig.ruby, "extconf.rb", chdir: ext, out: logf, err: [:child, :out]) &&
      system("make", "-j2", chdir: ext, out: [logf, "a"], err: [:child, :out])) or
      raise "building spillway at #{sha[0, 12]} failed (#{logf})"
    FileUtils.cp(File.join(ext, "spillway_ext.so"), File.join(dir, "lib", "spillway", "spillway_ext.so"))
    opts.spillway_built = sha
    File.join(dir, "lib")
  end
end

# Whether the Spillway the peer loads was built with libpq (its PostgreSQL
# backend is optional).
def spillway_has_libpq?(opts, tmp)
  out = IO.popen([RbConfig.ruby, "-I", spillway_lib(opts, tmp), "-rspillway", "-e", "print Spillway::Native::POSTGRES"],
                 err: File::NULL, &:read)
  out == "true"
end

# What the Spillway peer ran: the revision, and the extension it loaded.
def spillway_identity(opts)
  lib = opts.spillway_rev && @spillway_lib ? @spillway_lib : File.join(ROOT, "lib")
  so = File.join(lib, "spillway", "spillway_ext.so")
  return "no spillway_ext.so in #{lib}" unless File.exist?(so)

  san = IO.popen(["ldd", so], err: File::NULL, &:read)[/lib(asan|tsan|ubsan)/, 1]
  built = File.mtime(so).utc.iso8601
  src = opts.spillway_built ? "built by the bench from #{opts.spillway_built[0, 12]}" : "#{so.sub("#{ROOT}/", '')} (compiled #{built})"
  "#{src}#{san ? ", SANITIZER #{san}" : ''}"
end
