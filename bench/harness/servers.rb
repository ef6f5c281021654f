# frozen_string_literal: true

# Part of bench/run.rb: the systems under test (one fresh process per
# workload) and the Redis each one gets.

# A running system under test.
Server = Struct.new(:name, :pid, :port, :pub_port, :redis, :pub_mode, :lg_mode, :threads, :log, :dir,
                    keyword_init: true) do
  def sub_url(channel)
    case lg_mode
    when "mb" then "http://127.0.0.1:#{port}/message-bus"
    else "http://127.0.0.1:#{port}#{name == 'ceiling' || name.start_with?('nchan') ? '/sub' : '/stream'}?channel=#{channel}"
    end
  end

  def pub_url(channel)
    "http://127.0.0.1:#{pub_port || port}/pub?channel=#{channel}"
  end

  # loadgen arguments that pick the protocol for this system
  def lg_args(channel)
    lg_mode == "mb" ? ["-m", "mb", "-C", "/#{channel}"] : ["-m", "sse"]
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

def ruby_env(redis)
  env = { "BUNDLE_GEMFILE" => GEMFILE, "RACK_ENV" => "production", "REDIS_URL" => nil,
          "MB_MAX_ACTIVE_CLIENTS" => "20000" }
  env["REDIS_URL"] = redis.url if redis
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
  redis = Redis.new(tmp) if %w[nchan-redis live message_bus spillway].include?(name)
  pub_port = name == "live" ? free_port : nil
  spawn_opts = { out: logf, err: [:child, :out], rlimit_nofile: [NOFILE, NOFILE], pgroup: true }
  pid, pub_mode, lg_mode, threads =
    case name
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
                     chdir: File.join(BENCH, "peers/message_bus"), **spawn_opts), "app", "mb", 1]
    when "spillway", "spillway-memory"
      cluster = workers ? ["-w", workers.to_s] : []
      [Process.spawn(ruby_env(redis), *puma_cmd(port, "1:1", ["-I", spillway_lib(opts, tmp), *cluster], backlog: backlog),
                     chdir: File.join(BENCH, "peers/spillway"), **spawn_opts), "app", "sse", 1]
    end
  srv = Server.new(name: name, pid: pid, port: port, pub_port: pub_port, redis: redis, pub_mode: pub_mode, lg_mode: lg_mode,
                   threads: threads, log: logf, dir: dir)
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
