# frozen_string_literal: true

# Part of bench/run.rb: the workloads, each on a fresh server.

# Streams held by one process and memory per stream: add streams in steps;
# after each step publish one message and require every open stream to get it.
def ramp(srv, opts, tmp)
  cap = srv.name == "live" ? [opts.live_threads - LIVE_HEADROOM, 1].max : nil
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
    # connected stream gets the step's message (a stray failed connection
    # should not decide a number; the failure note records it).
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
    # An ordinary request while the streams are held (after the RSS sample,
    # so its allocations do not count as stream memory).
    ping = ping_stats(srv.port)
    rows << { step: n, streams: held, failed: lost_streams, rss_kb: rss, threads: threads_of(srv.pid),
              established: established(srv.port), ping: ping }
    log "  ramp #{srv.name}: #{held} of #{n} streams held, RSS #{rss / 1024} MiB, /ping max #{ping[:max_ms].inspect} ms"
  end
  summary = lg.finish(30)
  lg = nil
  last = rows.last
  {
    held: held, last_step: last && last[:step], max_tried: steps.last, failure: failure,
    capped: cap && last && last[:step] == steps.last ? cap : nil,
    base_rss_kb: base_rss, base_threads: base_threads, rows: rows,
    mem_per_stream_kb: last && held > 0 ? (last[:rss_kb] - base_rss).to_f / held : nil,
    # The slope from the first step to the last: what one more stream costs a
    # process that has already opened (and collected the garbage of) the first
    # step's streams.
    mem_slope_kb: rows.size >= 2 && last[:streams] > rows.first[:streams] ?
      (last[:rss_kb] - rows.first[:rss_kb]).to_f / (last[:streams] - rows.first[:streams]) : nil,
    threads_at_max: last && last[:threads], ping_at_held: last && last[:ping], loadgen: summary
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
  # Measure the streams that did connect when they are nearly all (noted in
  # the report; see LIVE_HEADROOM for why the live peer used to lose some).
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

# Closed loop (lockstep): the loadgen publishes k messages (one `count=k`
# request to an app, k pipelined POSTs to nchan and the ceiling) and the next
# k only when every stream has all of them, so a server cannot coalesce
# across batches: k = 1 is the pure per-message fan-out cost, k = 100 shows
# what coalescing gains. The run stops after opts.lockstep_seconds once a
# few batches are complete, or at the message limit.
def lockstep_run(srv, opts, tmp, channel:, k:, on_go: nil, on_done: nil)
  warm_up(srv, opts)
  max_msgs = k == 1 ? opts.lockstep_messages : opts.burst_messages
  min_batches = k == 1 ? LOCKSTEP_MIN_ROUNDS : LOCKSTEP_MIN_BURSTS
  deadline = opts.quick ? 120 : 600
  lg = loadgen([*srv.lg_args(channel), "-R", "-r", "0", "-c", opts.streams.to_s, "-e", max_msgs.to_s,
                "-t", deadline.to_s, "-P", srv.pub_url(channel), "-p", srv.pub_mode, "-K", k.to_s,
                "-n", max_msgs.to_s, "-D", opts.lockstep_seconds.to_s, "-N", min_batches.to_s,
                "-L", (opts.quick ? 30 : 180).to_s, "-s", opts.size.to_s, "-g", srv.sub_url(channel)],
               tmp, stdin: true)
  ready = lg.wait_event("ready", 180)
  connected = ready["connected"].to_i
  if connected < opts.streams * FANOUT_PASS
    lg.finish(30)
    return { error: "only #{connected} of #{opts.streams} streams connected" }
  end
  rss = rss_kb(srv.pid)
  cpu0 = cpu_s(srv.pid)
  rcpu0 = cpu_s(srv.redis&.pid)
  on_go&.call
  lg.command("go")
  res = lg.finish(deadline + 60)
  on_done&.call
  cpu = cpu_s(srv.pid) - cpu0
  rcpu = srv.redis ? cpu_s(srv.redis.pid) - rcpu0 : nil
  ls = res["lockstep"] || {}
  delivered = ls["deliveries"].to_i
  window = ls["window_s"].to_f
  out = {
    streams: opts.streams, connected: connected, rss_kb: rss, batch: k, loadgen: res, lockstep: ls,
    server_cpu_s: cpu.round(3), redis_cpu_s: rcpu&.round(3),
    cpu_s_per_million: delivered > 0 ? (cpu * 1e6 / delivered).round(2) : nil,
    redis_cpu_s_per_million: rcpu && delivered > 0 ? (rcpu * 1e6 / delivered).round(2) : nil,
    server_busy: window > 0 ? (cpu / window).round(3) : nil
  }
  out[:error] = "stalled: a batch did not reach every stream (#{ls['batches_complete']} complete)" if ls["stalled"]
  out[:error] ||= "no batch completed" if ls["batches_complete"].to_i.zero?
  out
ensure
  lg&.close!
end

# Time until the server lets go of one stream from 127.0.0.#{n} after its
# client process is killed, while a message a second is published on the
# channel (so servers that only notice on write get writes). `held` counts the
# server's sockets to that address; `isolate`, when given, runs once the
# server holds the stream and returns what undoes it.
def release_after_kill(srv, opts, tmp, channel:, n:, timeout:, interval:, digits:, held:, isolate: nil)
  warm_up(srv, opts)
  addr = "127.0.0.#{n}"
  lg = loadgen([*srv.lg_args(channel), "-H", "-R", "-c", "1", "-a", "#{n}-#{n}", srv.sub_url(channel)],
               tmp, stdin: true)
  ready = lg.wait_event("ready", 30)
  return { error: "the client did not connect" } unless ready["connected"] == 1

  wait_until("the server side of the stream", 10) { held.call(addr) >= 1 }
  undo = isolate&.call(addr)
  ticker = Process.spawn(File.join(BENCH, "pubgen"), "-m", srv.pub_mode, "-n", (timeout + 30).to_s,
                         "-R", "1", "-s", opts.size.to_s, "-t", (timeout + 5).to_s, srv.pub_url(channel),
                         out: File::NULL, err: File::NULL)
  begin
    t0 = mono
    lg.kill9
    released = begin
      wait_until("release", timeout, interval: interval) { held.call(addr).zero? }
      mono - t0
    rescue RuntimeError
      nil
    end
    { released_s: released&.round(digits), timeout_s: timeout }
  ensure
    undo&.call
    stop_process(ticker, grace: 2)
  end
ensure
  lg&.close!
end

# A client whose socket told the server: its kernel sends FIN (or RST when
# unread bytes were left). Released = no ESTABLISHED or CLOSE-WAIT socket to
# that address on the server's port (CLOSE-WAIT: the FIN arrived but the
# server has not closed its end). Needs no root.
def fin_release(srv, opts, tmp)
  release_after_kill(srv, opts, tmp, channel: "fin", n: FIN_ADDR, timeout: opts.fin_timeout,
                                     interval: 0.01, digits: 3, held: ->(addr) { held_sockets(srv.port, addr) })
end

# A client that vanished without FIN or RST: iptables drops every packet to
# and from 127.0.0.#{VANISH_ADDR} on lo before the client is killed (its FIN
# is dropped too); released = no ESTABLISHED socket to that address.
def vanish(srv, opts, tmp)
  isolate = lambda do |addr|
    rules = [%w[-s], %w[-d]].map { |dir| ["INPUT", "-i", "lo", *dir, addr, "-m", "comment", "--comment", IPT_TAG, "-j", "DROP"] }
    rules.each { |r| system("iptables", "-I", *r) or raise "iptables -I failed (root needed)" }
    -> { rules.each { |r| system("iptables", "-D", *r, err: File::NULL) } }
  end
  release_after_kill(srv, opts, tmp, channel: "vanish", n: VANISH_ADDR, timeout: opts.vanish_timeout,
                                     interval: 0.25, digits: 2, held: ->(addr) { established(srv.port, dst: addr) },
                                     isolate: isolate)
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

# The one-at-a-time lockstep row is the one whose ratios are close (Spillway
# against the ceiling), and one run of it moves by 5-10% with whatever else
# the machine does. So it is run opts.rounds times per system, the later runs
# interleaved (every system once, then again), and the median run is reported;
# every run is kept in :throughput_runs and listed in the report.
def lockstep_rounds(results, opts, tmp)
  return unless opts.rounds > 1 && opts.workloads.include?("throughput")

  results.each { |res| res[:throughput_runs] = [res[:throughput]].compact }
  (2..opts.rounds).each do |round|
    results.each do |res|
      name = res[:name]
      r = begin
        with_server(name, opts, tmp) { |s| lockstep_run(s, opts, tmp, channel: "throughput", k: 1) }
      rescue StandardError => e
        { error: "#{e.class}: #{e.message}"[0, 300] }
      end
      res[:throughput_runs] << r
      log "  #{name} throughput round #{round}/#{opts.rounds}: " \
          "#{r.dig(:lockstep, 'deliveries_per_s') || r[:error]} deliveries/s; server busy #{r[:server_busy]}"
    end
  end
  results.each do |res|
    ok = res[:throughput_runs].select { |r| r.is_a?(Hash) && !r[:error] && r.dig(:lockstep, "deliveries_per_s") }
    next if ok.empty?

    # The lower median for an even count: never the better of two middles.
    res[:throughput] = ok.sort_by { |r| r.dig(:lockstep, "deliveries_per_s") }[(ok.size - 1) / 2]
  end
end

# The publish round trip: N publishes one after the other inside the app
# process (POST /pubtime), each timed from the call to its return: for Redis
# and PostgreSQL the script or statement and its answer, for the memory
# backend the in-process cost. Nobody listens on the channel, so it is the
# publisher's cost alone.
ROUNDTRIP_SYSTEMS = %w[message_bus spillway spillway-memory spillway-pg].freeze

def roundtrip(srv, opts)
  warm_up(srv, opts)
  n = opts.quick ? 300 : 3000
  JSON.parse(http_post(srv.port, "/pubtime?channel=roundtrip&count=#{n}"), symbolize_names: true)
end

def run_system(name, opts, tmp)
  res = { name: name, loadavg_start: File.read("/proc/loadavg").split[0, 3].join(" ") }
  log "#{name}: starting"
  wl = opts.workloads
  wl &= LONG_POLL_WORKLOADS if name.end_with?("-lp")
  step = lambda do |key, &blk|
    begin
      res[key] = blk.call
    rescue StandardError => e
      res[key] = { error: "#{e.class}: #{e.message}"[0, 300] }
      log "  #{name} #{key}: #{res[key][:error]}"
    end
  end
  step.call(:ramp) { with_server(name, opts, tmp) { |s| res[:threads] = s.threads; ramp(s, opts, tmp) } } if wl.include?("ramp")
  step.call(:memory) { fresh_memory_runs(name, opts, tmp) } if wl.include?("memory")
  { throughput: 1, burst: opts.burst }.each do |key, k|
    next unless wl.include?(key.to_s)

    step.call(key) do
      with_server(name, opts, tmp) { |s| res[:threads] = s.threads; lockstep_run(s, opts, tmp, channel: key.to_s, k: k) }
    end
    r = res[key]
    log "  #{name} #{key} (lockstep, #{k} per batch): #{r.dig(:lockstep, 'deliveries_per_s')} deliveries/s" \
        "#{r[:error] ? " (#{r[:error]})" : ''}; server busy #{r[:server_busy]}, loadgen busy #{r.dig(:lockstep, 'loadgen_cpu_busy')}"
  end
  if wl.include?("openloop")
    step.call(:openloop) { throughput_run(name, opts, tmp, channel: "open", k: 1, res: res) }
    log "  #{name} openloop: #{res[:openloop].dig(:loadgen, 'deliveries_per_s') || res[:openloop][:error]}"
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
  if wl.include?("roundtrip") && ROUNDTRIP_SYSTEMS.include?(name)
    step.call(:roundtrip) { with_server(name, opts, tmp) { |s| roundtrip(s, opts) } }
    log "  #{name} publish round trip: #{res[:roundtrip].inspect}"
  end
  if wl.include?("storm") && STORM_SYSTEMS.include?(name)
    step.call(:storm) { with_server(name, opts, tmp) { |s| storm(s, opts, tmp) } }
    st = res[:storm]
    log "  #{name} storm: #{st[:served].inspect} of #{st[:streams].inspect} served, max " \
        "#{st.dig(:served_ms, 'max').inspect} ms, Redis commands #{st.dig(:redis, :calls).inspect}" \
        "#{st[:error] ? " (#{st[:error]})" : ''}"
  end
  if wl.include?("storm") && name == "spillway" && opts.storm_workers > 1
    # The same storm on Puma in cluster mode, one worker per core, with a
    # listen backlog that holds the whole storm: what a deploy of a
    # production Puma sees, and Puma's accept path spread over the cores.
    backlog = [PUMA_BACKLOG, opts.storm_streams * 2].max
    step.call(:storm_workers) do
      with_somaxconn(backlog) do |cap|
        with_server(name, opts, tmp, workers: opts.storm_workers, backlog: backlog) do |s|
          storm(s, opts, tmp).merge(workers: opts.storm_workers, backlog: [backlog, cap].min)
        end
      end
    end
    st = res[:storm_workers]
    log "  #{name} storm, #{opts.storm_workers} workers: #{st[:served].inspect} of #{st[:streams].inspect} served, max " \
        "#{st.dig(:served_ms, 'max').inspect} ms#{st[:error] ? " (#{st[:error]})" : ''}"
  end
  if wl.include?("fin")
    step.call(:fin) { with_server(name, opts, tmp) { |s| fin_release(s, opts, tmp) } }
    log "  #{name} fin: #{res[:fin].inspect}"
  end
  if wl.include?("vanish")
    step.call(:vanish) { with_server(name, opts, tmp) { |s| vanish(s, opts, tmp) } }
    log "  #{name} vanish: #{res[:vanish].inspect}"
  end
  if wl.include?("profile") && PROFILED.include?(name)
    step.call(:profile) { with_server(name, opts, tmp) { |s| profile_run(s, opts, tmp) } }
    log "  #{name} profile: #{res[:profile][:error] || "#{res[:profile][:samples]} samples"}"
  end
  res
end

# ---------- report ----------
