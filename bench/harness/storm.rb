# frozen_string_literal: true

# Part of bench/run.rb: the reconnect storm (issue #8) and the fresh-process
# memory figure, with the Redis bookkeeping they need.

require "net/http"

# The systems that keep a history a stream can resume from. The ceiling keeps
# none, and the Live peer is a bare SUBSCRIBE: neither can serve a resume.
STORM_SYSTEMS = %w[nchan nchan-redis message_bus spillway spillway-memory].freeze
# Once every stream has its messages, the loadgen reads on this long, so that
# a duplicate sent right after them still counts.
STORM_LINGER_S = 0.5

# ---------- Redis: INFO commandstats and cpu ----------

# One INFO of the bench's own redis-server, parsed: calls and usec per
# command, and the server's CPU (used_cpu_user + used_cpu_sys, every thread).
def redis_info(port)
  s = Socket.tcp("127.0.0.1", port, connect_timeout: 5)
  s.write("INFO cpu commandstats\r\n")
  head = s.gets("\r\n") or raise "redis #{port}: no answer to INFO"
  raise "redis #{port}: INFO answered #{head.strip}" unless head.start_with?("$")

  text = s.read(head[1..].to_i)
  calls = {}
  usec = {}
  text.each_line do |l|
    next unless (m = l.match(/\Acmdstat_(\S+):calls=(\d+),usec=(\d+)/))

    calls[m[1]] = m[2].to_i
    usec[m[1]] = m[3].to_i
  end
  cpu = text[/^used_cpu_user:([\d.]+)/, 1].to_f + text[/^used_cpu_sys:([\d.]+)/, 1].to_f
  { calls: calls, usec: usec, cpu_s: cpu }
ensure
  s&.close
end

# What happened on Redis between two INFOs. The INFO that took `before` is
# counted in `after` (a command's stats are updated once it ran) and is left
# out: it is the bench's, not the system's. Commands a Lua script runs
# (redis.call) are counted by Redis like any other, besides the EVAL/EVALSHA
# that ran them: `calls` is every command Redis executed, `script_calls` the
# EVAL/EVALSHA/FCALL among them.
def redis_delta(before, after)
  calls = after[:calls].to_h { |k, v| [k, v - before[:calls].fetch(k, 0)] }.reject { |k, v| k == "info" || v.zero? }
  usec = after[:usec].to_h { |k, v| [k, v - before[:usec].fetch(k, 0)] }.select { |k, _| calls.key?(k) }
  {
    calls: calls.values.sum, by_command: calls.sort_by { |k, v| [-v, k] }.to_h,
    script_calls: calls.select { |k, _| k.match?(/\A(eval|evalsha|eval_ro|evalsha_ro|fcall|fcall_ro)\z/) }.values.sum,
    usec: usec.values.sum, cpu_s: (after[:cpu_s] - before[:cpu_s]).round(3)
  }
end

# ---------- the reconnect storm ----------

# TcpExt ListenOverflows of the whole machine: connections the kernel
# dropped because an accept queue was full (the handshake is retried after
# 1 s, then 3 s, ...). Other processes on the machine count too.
def listen_overflows
  head, vals = File.read("/proc/net/netstat").lines.select { |l| l.start_with?("TcpExt:") }
  head.split.zip(vals.split).to_h["ListenOverflows"].to_i
rescue Errno::ENOENT, NoMethodError
  nil
end

# Publishes the message every stream of the storm resumes after (seq 1 on a
# fresh channel) and returns its id, as each system hands it out: Spillway's
# Spillway.publish return value (also the SSE id), message_bus's message id
# (MessageBus.publish's return value, the number its client polls from),
# nchan's "last message id" of the publisher's answer (the SSE id it sends,
# which it takes back as Last-Event-ID).
def publish_marker(srv, channel)
  http = Net::HTTP.new("127.0.0.1", srv.pub_port || srv.port)
  http.open_timeout = http.read_timeout = 10
  res = nil
  # nchan with Redis storage answers 503 until its link to Redis is up (a
  # second or so after it listens), and has been seen to leave a publish
  # unanswered for over 10 s right after its start: both retried. A raw
  # marker is the same "seq 1" again, and the storm resumes after the one
  # whose id came back. An app numbers its messages itself, so a publish
  # whose answer was lost is not repeated there: the run fails instead.
  wait_until("the marker publish to be accepted", 45, interval: 0.1) do
    res = if srv.pub_mode == "app"
            http.post("/pub?channel=#{channel}&count=1&seq=1", "")
          else
            begin
              http.post("/pub?channel=#{channel}", "1 #{Process.clock_gettime(Process::CLOCK_REALTIME, :nanosecond)}")
            rescue Net::ReadTimeout
              log "  #{srv.name}: the marker publish was not answered within 10 s; again"
              http.finish if http.started?
              nil
            end
          end
    res && res.code != "503"
  end
  raise "marker publish: HTTP #{res.code} #{res.body.to_s[0, 200].inspect}" unless res.code.start_with?("2")

  id = srv.pub_mode == "app" ? res.body.strip : res.body[/last message id: (\S+)/, 1]
  raise "marker publish: no message id in #{res.body.to_s[0, 200].inspect}" if id.nil? || id.empty?

  id
end

# A deploy: N streams come back at once, every one with the same
# Last-Event-ID, on one channel that got K messages since. First the marker
# (seq 1) and K messages (seqs 2..K+1) are published and answered; then one
# loadgen opens all N streams in the same loop iteration (-k N), each
# resuming after the marker, and records per stream when it has all K (it
# ends once every stream has them, plus STORM_LINGER_S). Redis: INFO right
# before the loadgen starts and right after it ends.
def storm(srv, opts, tmp)
  n = opts.storm_streams
  k = opts.storm_messages
  channel = "storm"
  warm_up(srv, opts)
  marker = publish_marker(srv, channel)
  pub = pubgen(srv, channel, n: k, k: k, size: opts.size, first_seq: 2, deadline: 60)
  raise "publishing the #{k} messages failed: #{pub.inspect}" unless pub["published"].to_i == k && pub["bad_status"].to_i.zero?

  before = srv.redis && redis_info(srv.redis.port)
  cpu0 = tree_cpu_s(srv.pid)
  rcpu0 = cpu_s(srv.redis&.pid)
  ovf0 = listen_overflows
  deadline = opts.quick ? 60 : 120
  lg = loadgen([*srv.lg_args(channel), "-c", n.to_s, "-k", n.to_s, "-I", marker, "-B", "1", "-e", k.to_s,
                "-M", k.to_s, "-G", STORM_LINGER_S.to_s, "-i", "10", "-t", deadline.to_s, srv.sub_url(channel)], tmp)
  res = lg.finish(deadline + 30)
  lg = nil
  ovf = ovf0 && listen_overflows&.-(ovf0)
  cpu = tree_cpu_s(srv.pid) - cpu0
  redis = srv.redis && redis_delta(before, redis_info(srv.redis.port))
  redis[:proc_cpu_s] = (cpu_s(srv.redis.pid) - rcpu0).round(3) if redis
  served = res["served"] || {}
  out = {
    streams: n, messages: k, cursor: marker, connected: res["connected"], failed: res["failed"],
    retries: res["retries"], served: served["streams"], served_ms: served["from_attempt_ms"],
    served_from_start_ms: served["from_start_ms"], served_from_head_ms: served["from_head_ms"],
    missing: res["missing"], dup: res["dup"], stale: res["stale"], ooo: res["ooo"], repolls: res["repolls"],
    connect_s: res["connect_s"], listen_overflows: ovf, server_cpu_s: cpu.round(3), redis: redis, loadgen: res
  }
  out[:error] = "only #{served['streams'].to_i} of #{n} streams were served" if served["streams"].to_i < n
  out
ensure
  lg&.close!
end

# Runs the block with net.core.somaxconn at least `want` (the kernel's cap
# on a listen backlog) when this process may raise it, and puts the old
# value back after; yields the cap in force.
def with_somaxconn(want)
  path = "/proc/sys/net/core/somaxconn"
  old = File.read(path).to_i
  if old < want
    begin
      File.write(path, want.to_s)
    rescue SystemCallError => e
      log "  somaxconn is #{old} and cannot be raised to #{want} (#{e.class}): the storm's backlog is capped"
    end
  end
  yield File.read(path).to_i
ensure
  begin
    File.write(path, old.to_s) if old && File.read(path).to_i != old
  rescue SystemCallError
    nil
  end
end

# ---------- memory per stream, fresh process ----------

# RSS once it stops moving: unchanged over a second (a process that has just
# started listening may still be finishing its boot: nginx connecting to
# Redis, Puma starting its threads).
def settled_rss_kb(pid, timeout: 10)
  last = rss_kb(pid)
  since = mono
  wait_until("RSS of #{pid} to settle", timeout, interval: 0.2) do
    now = rss_kb(pid)
    since = mono if now != last
    last = now
    mono - since >= 1.0
  end
  last
rescue RuntimeError
  last # still moving after the timeout: the last sample
end

# What a user sees who boots the server and opens N streams in one go:
# (RSS with the N streams open - RSS of the freshly booted process, before
# any request) / N. The streams are opened as the ramp opens them (-k 256
# attempts at a time), all at once rather than in steps; RSS is read once
# every stream has its first body byte (it is attached), before anything is
# published. Then one message is published and every stream must get it, so
# the figure is about streams that work.
def fresh_memory(srv, opts, tmp, streams)
  boot = settled_rss_kb(srv.pid)
  channel = "fresh"
  lg = loadgen([*srv.lg_args(channel), "-H", "-R", "-r", "0", "-k", "256", "-T", "20", "-c", streams.to_s,
                srv.sub_url(channel)], tmp, stdin: true)
  ready = lg.wait_event("ready", 180)
  connected = ready["connected"].to_i
  rss = rss_kb(srv.pid)
  raise "only #{connected} of #{streams} streams connected" if connected < streams * RAMP_PASS

  pubgen(srv, channel, n: 1, size: opts.size, deadline: 30)
  got = nil
  wait_until("every stream to get the message", opts.quick ? 15 : 60, interval: 0.25) do
    lg.command("status 1")
    got = lg.wait_event("status", 30)
    got["have_seq"] >= connected
  end
  lg.finish(30)
  lg = nil
  { streams: connected, boot_rss_kb: boot, rss_kb: rss, per_stream_kb: (rss - boot).to_f / connected }
rescue RuntimeError => e
  # The RSS is kept (per_stream_kb stays unset: the figure is for streams that work).
  { streams: streams, boot_rss_kb: boot, rss_kb: rss, error: e.message[0, 300], received: got && got["have_seq"] }
ensure
  lg&.close!
end

# The fresh figure at every size of opts.fresh_sizes, each on a new server.
def fresh_memory_runs(name, opts, tmp)
  cap = name == "live" ? [opts.live_threads - LIVE_HEADROOM, 1].max : nil
  sizes = opts.fresh_sizes.map { |n| cap ? [n, cap].min : n }.uniq
  sizes.map do |n|
    r = with_server(name, opts, tmp) { |s| fresh_memory(s, opts, tmp, n) }
    log "  #{name} memory, fresh process, #{n} streams: " \
        "#{r[:per_stream_kb] ? format('%.2f KiB per stream', r[:per_stream_kb]) : r[:error]}"
    r.merge(size: n)
  end
end
