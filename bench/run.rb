#!/usr/bin/env ruby
# frozen_string_literal: true

# Side-by-side benchmark: one command runs the same workloads against several
# SSE/pub-sub servers on this machine and reports the numbers and the ratios
# spillway / each peer.
#
#   ruby bench/run.rb --quick                 # smoke: small N, seconds per system
#   ruby bench/run.rb                         # full run, writes bench/RESULTS.md
#   ruby bench/run.rb --systems ceiling,nchan # a subset
#   ruby bench/run.rb --help
#
# Every workload runs against a fresh server process (and a fresh Redis where
# the system uses one): a Live-style server never notices that a client left,
# so reusing it would carry the previous run's threads into the next.
# Nothing waits on fixed sleeps: every wait is a condition with a deadline.
require "erb"
require "etc"
require "fileutils"
require "json"
require "optparse"
require "rbconfig"
require "socket"
require "time"
require "tmpdir"

BENCH = File.expand_path(__dir__)
ROOT = File.expand_path("..", BENCH)
GEMFILE = File.join(BENCH, "Gemfile")
CLK_TCK = Etc.sysconf(Etc::SC_CLK_TCK)
NOFILE = 20_000
IPT_TAG = "spillway-bench-vanish"
VANISH_ADDR = 251
RAMP_PASS = 0.995
FANOUT_PASS = 0.95 # 127.0.0.251 is kept for the vanishing client; loadgens use 2..250

SYSTEMS = %w[ceiling nchan nchan-redis live message_bus spillway spillway-memory].freeze

Options = Struct.new(:quick, :systems, :streams, :messages, :burst, :ramp_steps, :live_threads,
                     :latency_seconds, :rate, :vanish_timeout, :workloads, :output, :install,
                     :size, :keep_tmp, keyword_init: true)

def parse_options(argv)
  o = Options.new(quick: false, systems: SYSTEMS.dup, install: true, rate: 10, burst: 100, size: 0,
                  workloads: %w[ramp throughput burst latency vanish], keep_tmp: false)
  quick = argv.include?("--quick")
  OptionParser.new do |op|
    op.banner = "usage: ruby bench/run.rb [options]"
    op.on("--quick", "smoke mode: small N, a few seconds per workload") { o.quick = true }
    op.on("--systems LIST", "comma list of: #{SYSTEMS.join(',')}") { |v| o.systems = v.split(",") }
    op.on("--workloads LIST", "comma list of: ramp,throughput,burst,latency,vanish") do |v|
      o.workloads = v.split(",")
    end
    op.on("--streams N", Integer, "streams for throughput/latency (default 5000)") { |v| o.streams = v }
    op.on("--messages N", Integer, "messages per throughput run (default 200)") { |v| o.messages = v }
    op.on("--ramp-max N", Integer, "stop the ramp at N streams (default 19000)") { |v| o.ramp_steps = [v] }
    op.on("--live-threads N", Integer, "Puma threads for the live peer (default 5100)") do |v|
      o.live_threads = v
    end
    op.on("--latency-seconds S", Integer, "length of the 10 msg/s latency run (default 30)") do |v|
      o.latency_seconds = v
    end
    op.on("--vanish-timeout S", Integer, "give up waiting for a vanished client after S (default 60)") do |v|
      o.vanish_timeout = v
    end
    op.on("--size BYTES", Integer, "pad each message's data to about BYTES") { |v| o.size = v }
    op.on("--output PATH", "report path (default bench/RESULTS.md, --quick: bench/RESULTS-quick.md)") do |v|
      o.output = v
    end
    op.on("--no-install", "do not apt-get / bundle install") { o.install = false }
    op.on("--keep-tmp", "keep the temporary directory (logs, configs)") { o.keep_tmp = true }
  end.parse!(argv)
  ramp_max = o.ramp_steps&.first || (quick ? 600 : 19_000)
  step = quick ? 200 : 1000
  o.ramp_steps = (step..ramp_max).step(step).to_a
  o.ramp_steps << ramp_max unless o.ramp_steps.last == ramp_max
  o.streams ||= quick ? 300 : 5000
  o.messages ||= quick ? 20 : 200
  o.live_threads ||= quick ? 700 : 5100
  o.latency_seconds ||= quick ? 3 : 30
  o.vanish_timeout ||= quick ? 8 : 60
  o.output ||= File.join(BENCH, quick ? "RESULTS-quick.md" : "RESULTS.md")
  bad = o.systems - SYSTEMS
  abort "unknown system(s): #{bad.join(', ')} (known: #{SYSTEMS.join(', ')})" unless bad.empty?
  o
end

def log(msg)
  $stderr.puts "[bench #{Time.now.strftime('%H:%M:%S')}] #{msg}"
end

# ---------- waiting, processes, /proc ----------

def wait_until(what, timeout, interval: 0.05)
  deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
  loop do
    r = yield
    return r if r
    raise "timed out after #{timeout}s waiting for #{what}" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

    sleep interval
  end
end

def free_port
  s = TCPServer.new("127.0.0.1", 0)
  s.addr[1]
ensure
  s&.close
end

def port_open?(port)
  Socket.tcp("127.0.0.1", port, connect_timeout: 0.5).close
  true
rescue SystemCallError, IOError
  false
end

def alive?(pid)
  Process.waitpid(pid, Process::WNOHANG).nil?
rescue Errno::ECHILD
  false
end

def stop_process(pid, grace: 5)
  return unless pid

  begin
    Process.kill("TERM", pid)
  rescue Errno::ESRCH
    return
  end
  begin
    wait_until("pid #{pid} to exit", grace) { !alive?(pid) }
  rescue RuntimeError
    begin
      Process.kill("KILL", pid)
      Process.waitpid(pid)
    rescue Errno::ESRCH, Errno::ECHILD
      nil
    end
  end
end

def rss_kb(pid)
  File.read("/proc/#{pid}/status")[/^VmRSS:\s+(\d+)/, 1].to_i
rescue Errno::ENOENT
  0
end

def threads_of(pid)
  File.read("/proc/#{pid}/status")[/^Threads:\s+(\d+)/, 1].to_i
rescue Errno::ENOENT
  0
end

# utime + stime of a process, in seconds (fields 14 and 15 of /proc/PID/stat).
def cpu_s(pid)
  return 0.0 unless pid

  f = File.read("/proc/#{pid}/stat").split(") ", 2)[1].split
  (f[11].to_i + f[12].to_i).to_f / CLK_TCK
rescue Errno::ENOENT
  0.0
end

def established(port, dst: nil)
  filter = "( sport = :#{port} )"
  filter = "( sport = :#{port} and dst #{dst} )" if dst
  out = IO.popen(["ss", "-Htn", "state", "established", filter], &:read)
  out.lines.count { |l| !l.strip.empty? }
end

# A child speaking JSON lines on stdout (loadgen, pubgen).
class Tool
  attr_reader :pid, :lines

  def initialize(args, log_path, stdin: false)
    @stdin = stdin
    popen_opts = { err: [log_path, "a"] }
    popen_opts[:in] = "/dev/null" unless stdin # a loadgen that does not take commands reads nothing
    @io = IO.popen(args, stdin ? "r+" : "r", **popen_opts)
    @pid = @io.pid
    @buf = +""
    @lines = []
    @eof = false
  end

  def command(line)
    @io.write("#{line}\n")
    @io.flush
  end

  # Next JSON line (Hash) within timeout, or nil at EOF. Raises on timeout.
  def next_line(timeout)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    loop do
      if (i = @buf.index("\n"))
        line = @buf.slice!(0, i + 1).strip
        next if line.empty?

        h = JSON.parse(line) rescue { "raw" => line }
        @lines << h
        return h
      end
      return nil if @eof

      left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
      raise "timed out after #{timeout}s reading from pid #{@pid}" if left <= 0

      next unless IO.select([@io], nil, nil, [left, 0.5].min)

      begin
        @buf << @io.read_nonblock(65_536)
      rescue EOFError
        @eof = true
      rescue IO::WaitReadable
        nil
      end
    end
  end

  def wait_event(name, timeout)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    loop do
      left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
      h = next_line([left, 0.001].max)
      raise "pid #{@pid} ended before #{name}" unless h
      return h if h["event"] == name
    end
  end

  # Reads to EOF (closing our end of its stdin first), returns the last JSON line.
  def finish(timeout)
    @io.close_write if @stdin && !@io.closed?
    last = nil
    begin
      while (h = next_line(timeout))
        last = h
      end
    rescue RuntimeError
      Process.kill("TERM", @pid) rescue nil
      while (h = next_line(10))
        last = h
      end
    end
    @io.close
    last
  end

  # For ensure blocks: a tool still running after an error is stopped.
  def close!
    return if @io.closed?

    Process.kill("KILL", @pid) rescue nil
    @io.close rescue nil
  end

  def kill9
    Process.kill("KILL", @pid)
  rescue Errno::ESRCH
    nil
  ensure
    @io.close rescue nil
  end
end

# ---------- setup ----------

def sh_ok(*cmd)
  system(*cmd, out: File::NULL, err: File::NULL)
end

def ensure_setup(opts, tmp)
  if opts.install
    need = []
    need << "redis-server" unless sh_ok("which", "redis-server")
    need << "nginx" unless sh_ok("which", "nginx")
    need << "libnginx-mod-nchan" unless File.exist?("/usr/lib/nginx/modules/ngx_nchan_module.so")
    need << "iproute2" unless sh_ok("which", "ss")
    need << "iptables" unless sh_ok("which", "iptables")
    unless need.empty?
      log "apt-get install -y #{need.join(' ')}"
      system("apt-get", "update", "-q") && system("apt-get", "install", "-y", "-q", *need) or
        abort "could not install #{need.join(' ')}"
    end
    env = { "BUNDLE_GEMFILE" => GEMFILE }
    unless system(env, "bundle", "check", out: File::NULL, err: File::NULL)
      log "bundle install (bench/Gemfile)"
      system(env, "bundle", "config", "set", "--local", "path", "vendor/bundle", chdir: BENCH) &&
        system(env, "bundle", "install", "--quiet", chdir: BENCH) or abort "bundle install failed"
    end
  end
  system("make", "-s", "-C", BENCH) or abort "building the C tools failed (make -C bench)"
  Process.setrlimit(:NOFILE, NOFILE, NOFILE) rescue Process.setrlimit(:NOFILE, Process.getrlimit(:NOFILE)[1])
  FileUtils.mkdir_p(tmp)
end

# ---------- servers ----------

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

def puma_cmd(port, threads, extra = [])
  ["bundle", "exec", "puma", "-e", "production", "-t", threads, "-b", "tcp://127.0.0.1:#{port}?backlog=4096",
   *extra, "config.ru"]
end

def start_server(name, opts, tmp)
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
      [Process.spawn(ruby_env(redis), *puma_cmd(port, "1:1", ["-I", File.join(ROOT, "lib")]),
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

def with_server(name, opts, tmp)
  srv = start_server(name, opts, tmp)
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

# ---------- workloads ----------

# Streams held by one process and memory per stream: add streams in steps;
# after each step publish one message and require every open stream to get it.
def ramp(srv, opts, tmp)
  cap = srv.name == "live" ? [opts.live_threads - 100, 1].max : nil
  steps = opts.ramp_steps.select { |n| cap.nil? || n <= cap }
  steps << cap if cap && steps.last != cap && cap < opts.ramp_steps.last
  channel = "ramp"
  warm_up(srv, opts)
  base_rss = rss_kb(srv.pid)
  base_threads = threads_of(srv.pid)
  lg = loadgen([*srv.lg_args(channel), "-H", "-R", "-r", "0", "-k", "256", "-T", "20", "-c", "0",
                srv.sub_url(channel)], tmp, stdin: true)
  lg.wait_event("ready", 30) # the empty start (-c 0)
  held = 0
  target = 0
  rows = []
  failure = nil
  steps.each_with_index do |n, i|
    lg.command("add #{n - target}")
    target = n
    ready = nil
    ready = lg.wait_event("ready", 120) until ready && ready["target"] == n
    connected = ready["connected"].to_i
    # A step passes when at least RAMP_PASS of its streams connect and every
    # connected stream gets the step's message. (Puma leaves the odd request
    # unanswered near a few thousand threads; one such request should not
    # decide the Live-style peer's number, the failure note records it.)
    if connected < n * RAMP_PASS
      failure = "#{ready['failed']} of #{n} connections failed"
      break
    end
    seq = i + 1
    pubgen(srv, channel, n: 1, size: opts.size, first_seq: seq, deadline: 30)
    got = nil
    begin
      wait_until("every stream to get message #{seq}", opts.quick ? 15 : 60, interval: 0.25) do
        lg.command("status #{seq}")
        got = lg.wait_event("status", 30)
        got["have_seq"] >= connected
      end
    rescue RuntimeError
      failure = "at #{n} streams only #{got && got['have_seq']} of #{connected} received the step's message"
      break
    end
    lost_streams = n - got["have_seq"]
    held = got["have_seq"]
    rss = rss_kb(srv.pid)
    rows << { step: n, streams: held, failed: lost_streams, rss_kb: rss, threads: threads_of(srv.pid), established: established(srv.port) }
    log "  ramp #{srv.name}: #{held} of #{n} streams held, RSS #{rss / 1024} MiB"
  end
  summary = lg.finish(30)
  lg = nil
  last = rows.last
  {
    held: held, last_step: last && last[:step], max_tried: steps.last, failure: failure,
    capped: cap && last && last[:step] == steps.last ? cap : nil,
    base_rss_kb: base_rss, base_threads: base_threads, rows: rows,
    mem_per_stream_kb: last && held > 0 ? (last[:rss_kb] - base_rss).to_f / held : nil,
    threads_at_max: last && last[:threads], loadgen: summary
  }
ensure
  lg&.close!
end

# N streams, M messages published by pubgen in bursts of k (1 = one at a time,
# as fast as the server answers). Returns the loadgen summary plus server CPU.
def fanout_run(srv, opts, tmp, channel:, streams:, messages:, k:, rate: 0, idle: nil)
  warm_up(srv, opts)
  # No retries (-r 0): a Live-style server keeps the thread of an abandoned
  # attempt forever, so a retry would cost it a second thread.
  lg = loadgen([*srv.lg_args(channel), "-R", "-r", "0", "-c", streams.to_s, "-M", messages.to_s, "-e", messages.to_s,
                "-t", (opts.quick ? 90 : 400).to_s, "-i", (idle || (opts.quick ? 5 : 15)).to_s,
                srv.sub_url(channel)], tmp)
  ready = lg.wait_event("ready", 180)
  connected = ready["connected"].to_i
  # Puma near 5,000 threads leaves the odd request unanswered; measure the
  # streams that did connect when they are nearly all (noted in the report).
  if connected < streams * FANOUT_PASS
    lg.finish(30)
    return { error: "only #{connected} of #{streams} streams connected" }
  end
  rss = rss_kb(srv.pid)
  cpu0 = cpu_s(srv.pid)
  rcpu0 = cpu_s(srv.redis&.pid)
  pub = pubgen(srv, channel, n: messages, k: k, rate: rate, size: opts.size,
                             deadline: opts.quick ? 60 : 400)
  res = lg.finish(opts.quick ? 120 : 500)
  cpu = cpu_s(srv.pid) - cpu0
  rcpu = srv.redis ? cpu_s(srv.redis.pid) - rcpu0 : nil
  delivered = res["messages"].to_i
  {
    streams: streams, connected: connected, rss_kb: rss, loadgen: res, publisher: pub, server_cpu_s: cpu.round(3),
    redis_cpu_s: rcpu&.round(3),
    cpu_s_per_million: delivered > 0 ? (cpu * 1e6 / delivered).round(2) : nil,
    redis_cpu_s_per_million: rcpu && delivered > 0 ? (rcpu * 1e6 / delivered).round(2) : nil
  }
ensure
  lg&.close!
end

# Time until the server lets go of a client that vanished without FIN or RST:
# open one stream from 127.0.0.251, drop every packet to and from that address
# on lo with iptables, kill the client (its FIN is dropped too) and watch the
# server's ESTABLISHED sockets to that address while a message a second is
# published on the channel (so servers that only notice on write get writes).
def vanish(srv, opts, tmp)
  channel = "vanish"
  warm_up(srv, opts)
  lg = loadgen([*srv.lg_args(channel), "-H", "-R", "-c", "1", "-a", "#{VANISH_ADDR}-#{VANISH_ADDR}",
                srv.sub_url(channel)], tmp, stdin: true)
  ready = lg.wait_event("ready", 30)
  return { error: "the vanishing client did not connect" } unless ready["connected"] == 1

  addr = "127.0.0.#{VANISH_ADDR}"
  wait_until("the server side of the stream", 10) { established(srv.port, dst: addr) >= 1 }
  rules = [%w[-s], %w[-d]].map { |dir| ["INPUT", "-i", "lo", *dir, addr, "-m", "comment", "--comment", IPT_TAG, "-j", "DROP"] }
  rules.each { |r| system("iptables", "-I", *r) or raise "iptables -I failed (root needed)" }
  ticker = Process.spawn(File.join(BENCH, "pubgen"), "-m", srv.pub_mode, "-n", (opts.vanish_timeout + 30).to_s,
                         "-R", "1", "-s", opts.size.to_s, "-t", (opts.vanish_timeout + 5).to_s, srv.pub_url(channel),
                         out: File::NULL, err: File::NULL)
  begin
    t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    lg.kill9
    released = nil
    begin
      wait_until("release", opts.vanish_timeout, interval: 0.25) { established(srv.port, dst: addr).zero? }
      released = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0
    rescue RuntimeError
      released = nil
    end
    { released_s: released&.round(2), timeout_s: opts.vanish_timeout }
  ensure
    rules.each { |r| system("iptables", "-D", *r, err: File::NULL) }
    stop_process(ticker, grace: 2)
  end
ensure
  lg&.close!
end

# A throughput run whose window is shorter than MIN_WINDOW_S says little (a
# server that coalesces frames can take 200 messages x 5,000 streams in a
# tenth of a second); such a run is repeated on a fresh server with more
# messages, up to MAX_MESSAGES, and the short one is kept as :probe.
MIN_WINDOW_S = 2.0
MAX_MESSAGES = 5000

def throughput_run(name, opts, tmp, channel:, k:, res:)
  msgs = opts.messages
  probe = nil
  loop do
    r = with_server(name, opts, tmp) do |s|
      res[:threads] = s.threads
      fanout_run(s, opts, tmp, channel: channel, streams: opts.streams, messages: msgs, k: k)
    end
    r[:messages] = msgs
    r[:probe] = probe if probe
    window = r.dig(:loadgen, "window_s").to_f
    # Only a run that delivered everything quickly is worth repeating bigger.
    complete = window.positive? && r.dig(:loadgen, "missing").to_i.zero?
    return r if opts.quick || r[:error] || !complete || window >= MIN_WINDOW_S || msgs >= MAX_MESSAGES || probe

    probe = { messages: msgs, window_s: window, deliveries_per_s: r.dig(:loadgen, "deliveries_per_s") }
    msgs = ((msgs * MIN_WINDOW_S * 1.5 / [window, 0.01].max) / 100.0).ceil * 100
    msgs = msgs.clamp(opts.messages, MAX_MESSAGES)
    log "  #{name}: #{window.round(3)} s window is short; again with #{msgs} messages"
  end
end

def run_system(name, opts, tmp)
  res = { name: name, loadavg_start: File.read("/proc/loadavg").split[0, 3].join(" ") }
  log "#{name}: starting"
  wl = opts.workloads
  step = lambda do |key, &blk|
    begin
      res[key] = blk.call
    rescue StandardError => e
      res[key] = { error: "#{e.class}: #{e.message}"[0, 300] }
      log "  #{name} #{key}: #{res[key][:error]}"
    end
  end
  step.call(:ramp) { with_server(name, opts, tmp) { |s| res[:threads] = s.threads; ramp(s, opts, tmp) } } if wl.include?("ramp")
  if wl.include?("throughput")
    step.call(:throughput) { throughput_run(name, opts, tmp, channel: "one", k: 1, res: res) }
    log "  #{name} throughput: #{res[:throughput].dig(:loadgen, 'deliveries_per_s') || res[:throughput][:error]}"
  end
  if wl.include?("burst")
    step.call(:burst) { throughput_run(name, opts, tmp, channel: "burst", k: opts.burst, res: res) }
    log "  #{name} burst: #{res[:burst].dig(:loadgen, 'deliveries_per_s') || res[:burst][:error]}"
  end
  if wl.include?("latency")
    step.call(:latency) do
      with_server(name, opts, tmp) do |s|
        fanout_run(s, opts, tmp, channel: "latency", streams: opts.streams,
                                 messages: opts.rate * opts.latency_seconds, k: 1, rate: opts.rate, idle: 5)
      end
    end
    log "  #{name} latency p99: #{res[:latency].dig(:loadgen, 'latency_ms', 'p99') || res[:latency][:error]} ms"
  end
  if wl.include?("vanish")
    step.call(:vanish) { with_server(name, opts, tmp) { |s| vanish(s, opts, tmp) } }
    log "  #{name} vanish: #{res[:vanish].inspect}"
  end
  res
end

# ---------- report ----------

def versions
  lock = File.read(File.join(BENCH, "Gemfile.lock")) rescue ""
  gem_v = ->(g) { lock[/^    #{Regexp.escape(g)} \(([^)]+)\)/, 1] || "?" }
  nginx = `nginx -v 2>&1`.strip.sub("nginx version: ", "")
  nchan = `dpkg-query -W -f='${Version}' libnginx-mod-nchan 2>/dev/null`.strip
  redis = `redis-server --version`[/v=(\S+)/, 1]
  sw = File.read(File.join(ROOT, "lib/spillway/version.rb"))[/VERSION\s*=\s*"([^"]+)"/, 1] rescue "?"
  rev = `git -C #{ROOT} rev-parse --short HEAD 2>/dev/null`.strip
  {
    "ruby" => RUBY_DESCRIPTION, "puma" => gem_v["puma"], "rack" => gem_v["rack"], "redis gem" => gem_v["redis"],
    "message_bus" => gem_v["message_bus"], "redis-server" => redis, "nginx" => nginx, "nchan" => nchan,
    "spillway" => "#{sw} (#{rev.empty? ? 'no commit yet' : rev}#{`git -C #{ROOT} status --porcelain 2>/dev/null`.empty? ? '' : ', uncommitted changes'})",
    "gcc" => `gcc -dumpfullversion 2>/dev/null`.strip
  }
end

def fmt(v, digits = 0)
  return "–" if v.nil?
  return v if v.is_a?(String)

  digits.zero? ? v.round.to_s.reverse.scan(/\d{1,3}/).join(",").reverse : format("%.#{digits}f", v)
end

def metrics(r, opts)
  t = r[:throughput] || {}
  b = r[:burst] || {}
  l = r[:latency] || {}
  ramp = r[:ramp] || {}
  held = ramp[:held]
  {
    held: held && !ramp[:error] ? held : nil,
    held_note: if ramp[:error] then "error"
               elsif ramp[:capped] then "capped at #{ramp[:capped]} (Puma threads #{opts.live_threads})"
               elsif ramp[:failure] then "failed next step: #{ramp[:failure]}"
               elsif ramp[:last_step] == ramp[:max_tried] then "ramp limit"
               end,
    per_thread: held && r[:threads] ? held.to_f / r[:threads] : nil,
    mem_kb: ramp[:mem_per_stream_kb],
    dps1: t.dig(:loadgen, "deliveries_per_s"),
    dps100: b.dig(:loadgen, "deliveries_per_s"),
    p50: l.dig(:loadgen, "latency_ms", "p50"),
    p99: l.dig(:loadgen, "latency_ms", "p99"),
    release: r.dig(:vanish, :released_s),
    release_note: r[:vanish] && !r[:vanish][:error] && r.dig(:vanish, :released_s).nil? ? "> #{opts.vanish_timeout}" : nil,
    cpu: t[:cpu_s_per_million],
    lost: [t, b, l].sum { |x| x.dig(:loadgen, "missing").to_i + 0 },
    dup: [t, b, l].sum { |x| x.dig(:loadgen, "dup").to_i },
    lg_busy: t.dig(:loadgen, "cpu_busy_in_window"),
    lg_busy_burst: b.dig(:loadgen, "cpu_busy_in_window")
  }
end

METRICS = [
  [:held, "streams held by one process", 0, :higher],
  [:per_thread, "streams per app-server thread", 0, :higher],
  [:mem_kb, "memory per open stream (KiB RSS)", 2, :lower],
  [:dps1, "deliveries/s, one message at a time", 0, :higher],
  [:dps100, "deliveries/s, bursts of 100", 0, :higher],
  [:p50, "latency p50 at 10 msg/s (ms)", 2, :lower],
  [:p99, "latency p99 at 10 msg/s (ms)", 2, :lower],
  [:release, "vanished client released after (s)", 1, :lower],
  [:cpu, "server CPU s per million deliveries", 2, :lower]
].freeze

def report(results, opts, started, finished, argv)
  m = results.to_h { |r| [r[:name], metrics(r, opts)] }
  mem = File.read("/proc/meminfo")[/MemTotal:\s+(\d+)/, 1].to_i / 1024
  out = +"# Spillway side-by-side benchmark\n\n"
  out << "Generated by `bench/run.rb` from a real run; nothing in this file is typed by hand.\n\n"
  out << "- date: #{started.utc.iso8601} (#{(finished - started).round} s)\n"
  out << "- command: `ruby bench/run.rb #{argv.join(' ')}`\n"
  out << "- machine: `#{`uname -a`.strip}`, #{Etc.nprocessors} cores, #{mem} MiB\n"
  out << "- mode: #{opts.quick ? 'quick (smoke; numbers are not comparable to a full run)' : 'full'}\n"
  out << "- streams for throughput/latency: #{opts.streams}; messages per throughput run: #{opts.messages}; " \
         "latency: #{opts.rate} msg/s for #{opts.latency_seconds} s; ramp steps up to #{opts.ramp_steps.last}\n"
  out << "- versions: #{versions.map { |k, v| "#{k} #{v}" }.join('; ')}\n\n"
  names = results.map { |r| r[:name] }
  out << "## Results\n\n| metric | #{names.join(' | ')} |\n|---|#{names.map { '---:' }.join('|')}|\n"
  METRICS.each do |key, label, digits, _dir|
    row = names.map do |n|
      v = m[n][key]
      note = key == :release ? m[n][:release_note] : nil
      note || fmt(v, digits)
    end
    out << "| #{label} | #{row.join(' | ')} |\n"
  end
  out << "| messages missing (all runs) | #{names.map { |n| fmt(m[n][:lost]) }.join(' | ')} |\n"
  out << "| duplicates (all runs) | #{names.map { |n| fmt(m[n][:dup]) }.join(' | ')} |\n"
  out << "| loadgen CPU busy, throughput / burst run (1.00 = loadgen saturated) | " \
         "#{names.map { |n| "#{fmt(m[n][:lg_busy], 2)} / #{fmt(m[n][:lg_busy_burst], 2)}" }.join(' | ')} |\n"
  out << "| load average at start | #{results.map { |r| r[:loadavg_start] }.join(' | ')} |\n"
  notes = results.filter_map do |r|
    errs = %i[ramp throughput burst latency vanish].filter_map { |k| "#{k}: #{r[k][:error]}" if r[k].is_a?(Hash) && r[k][:error] }
    %i[throughput burst latency].each do |k|
      x = r[k]
      next unless x.is_a?(Hash) && x[:connected] && x[:connected] < x[:streams]

      errs << "#{k}: measured on the #{x[:connected]} of #{x[:streams]} streams that connected"
    end
    hn = m[r[:name]][:held_note]
    parts = []
    parts << "held: #{hn}" if hn
    parts.concat(errs)
    "- **#{r[:name]}**: #{parts.join('; ')}" unless parts.empty?
  end
  out << "\n#{notes.join("\n")}\n" unless notes.empty?

  sw = %w[spillway spillway-memory].find { |n| names.include?(n) && m[n][:dps1] }
  if sw
    out << "\n## Ratios #{sw} / peer\n\nAbove 1 is better for Spillway where higher is better " \
           "(streams, deliveries); below 1 is better where lower is better (memory, latency, release, CPU).\n\n"
    peers = names - [sw]
    out << "| metric | better | #{peers.join(' | ')} |\n|---|---|#{peers.map { '---:' }.join('|')}|\n"
    METRICS.each do |key, label, _d, dir|
      a = m[sw][key]
      row = peers.map do |p|
        b = m[p][key]
        next "–" unless a && b && b.to_f != 0

        q = a.to_f / b
        q >= 0.1 ? format("%.2f", q) : format("%.2g", q) # keep two significant digits of small ratios
      end
      out << "| #{label} | #{dir} | #{row.join(' | ')} |\n"
    end
  else
    out << "\n## Ratios\n\nNo Spillway result in this run (not selected, or it did not start), so no ratios.\n"
  end
  out << <<~MD

    ## How each number is measured

    - **streams held**: one hold-mode `loadgen` adds streams in steps (#{opts.ramp_steps.first} at a time);
      after each step one message is published and every open stream must receive it. Held = the last
      step that passed; the ramp stops at the first failed step or at its limit (`ulimit -n` is 20000, so
      #{opts.ramp_steps.last} is the most one process can be asked to hold here).
      Live needs one Puma thread and one Redis connection per stream, so its ramp is capped below its
      thread count.
    - **streams per app-server thread**: held / request threads of the server (Puma `-t 1:1` for
      Spillway and message_bus; one nginx worker; the ceiling's one thread; Live: its Puma threads).
    - **memory per open stream**: (VmRSS of the server process at the last held step - VmRSS before
      the first stream) / streams, from `/proc/<pid>/status`. User-space memory only: the kernel's socket
      buffers are not in RSS (which is why the ceiling, which keeps one slot per stream, shows almost 0).
    - **deliveries/s**: #{opts.streams} streams on one channel, #{opts.messages} messages published by `pubgen`
      (one request per message and waiting for each answer, or bursts of #{opts.burst}); deliveries counted by
      `loadgen` over the window from the first message's publish stamp to the last receive. A run whose
      window is under #{MIN_WINDOW_S} s is repeated with more messages (up to #{MAX_MESSAGES}; see `messages` in the JSON).
      The ceiling and nchan fan a message out before they answer its publish, so a publisher that waits for
      each answer paces them message by message; live, message_bus and Spillway answer once the message is
      handed on (Redis, or the hub's queue), so there "one at a time" also lets messages queue up and the
      number is their fan-out rate.
    - **latency**: #{opts.streams} streams, #{opts.rate} messages/s for #{opts.latency_seconds} s; publish-to-receive from the
      CLOCK_REALTIME stamp at the start of each message (stamped by the app right before its publish call,
      or by `pubgen` right before write() for nchan and the ceiling).
    - **vanished client**: one stream from 127.0.0.#{VANISH_ADDR}; iptables drops every packet to and from that
      address on lo, the client is killed (its FIN is dropped too) and a message a second is published;
      the time until the server has no ESTABLISHED socket to that address (`ss`). "> N" = not within N s.
    - **CPU per million deliveries**: utime+stime of the server process (`/proc/<pid>/stat`) during the
      one-at-a-time throughput run / deliveries x 10^6. Redis's own CPU is in results.json.
    - Every workload runs on a fresh server process (and a fresh Redis); Redis runs with
      `client-output-buffer-limit pubsub 0 0 0` and no persistence.
    - The machine has #{Etc.nprocessors} cores: server, Redis, `loadgen` and `pubgen` share them, so absolute numbers
      are machine-bound; the ratios are the point. Raw numbers: `#{File.basename(opts.output, '.md')}.json`.
  MD
  out
end

# ---------- main ----------

def main(argv)
  original = argv.dup
  opts = parse_options(argv)
  tmp = Dir.mktmpdir("spillway-bench-")
  started = Time.now
  ensure_setup(opts, tmp)
  system("iptables", "-S", out: File::NULL, err: File::NULL) or
    (opts.workloads.delete("vanish") && log("iptables unavailable: skipping the vanish workload"))
  log "systems: #{opts.systems.join(', ')}; workloads: #{opts.workloads.join(', ')}; tmp #{tmp}"
  results = opts.systems.map { |name| run_system(name, opts, tmp) }
  finished = Time.now
  md = report(results, opts, started, finished, original)
  File.write(opts.output, md)
  File.write(opts.output.sub(/\.md\z/, ".json"), JSON.pretty_generate(results))
  puts md
  log "wrote #{opts.output}"
ensure
  if tmp && !opts&.keep_tmp
    FileUtils.rm_rf(tmp)
  elsif tmp
    log "kept #{tmp}"
  end
end

main(ARGV) if $PROGRAM_NAME == __FILE__
