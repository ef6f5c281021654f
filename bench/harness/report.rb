# frozen_string_literal: true

# Part of bench/run.rb: RESULTS.md from the results (the targets of issue #4
# are in targets.rb, the profile section in profile_report.rb).

def versions(opts)
  lock = File.read(File.join(BENCH, "Gemfile.lock")) rescue ""
  gem_v = ->(g) { lock[/^    #{Regexp.escape(g)} \(([^)]+)\)/, 1] || "?" }
  nginx = `nginx -v 2>&1`.strip.sub("nginx version: ", "")
  nchan = `dpkg-query -W -f='${Version}' libnginx-mod-nchan 2>/dev/null`.strip
  redis = `redis-server --version`[/v=(\S+)/, 1]
  sw = File.read(File.join(ROOT, "lib/spillway/version.rb"))[/VERSION\s*=\s*"([^"]+)"/, 1] rescue "?"
  rev = `git -C #{ROOT} rev-parse --short HEAD 2>/dev/null`.strip
  # Only changes to what the benchmark loads (the C core and the Ruby layer) matter here.
  dirty = `git -C #{ROOT} status --porcelain -- ext lib 2>/dev/null`.lines.map { |l| l[3..].strip }
  {
    "ruby" => RUBY_DESCRIPTION, "puma" => gem_v["puma"], "rack" => gem_v["rack"], "redis gem" => gem_v["redis"],
    "message_bus" => gem_v["message_bus"], "redis-server" => redis, "nginx" => nginx, "nchan" => nchan,
    "spillway" => if opts.spillway_built
                    "#{sw}: #{spillway_identity(opts)} (--spillway-rev #{opts.spillway_rev})"
                  else
                    "#{sw} (#{rev.empty? ? 'no commit yet' : rev}" \
                      "#{dirty.empty? ? '' : ", uncommitted changes in #{dirty.join(', ')}"}); " \
                      "measured: #{spillway_identity(opts)}"
                  end,
    "perf" => `perf --version 2>/dev/null`.strip.sub("perf version ", ""),
    "gcc" => `gcc -dumpfullversion 2>/dev/null`.strip
  }
end

def fmt(v, digits = 0)
  return "–" if v.nil?
  return v if v.is_a?(String)

  digits.zero? ? v.round.to_s.reverse.scan(/\d{1,3}/).join(",").reverse : format("%.#{digits}f", v)
end

def ok_run(x)
  x.is_a?(Hash) && !x[:error] ? x : {}
end

# Every delivery run counted once: the median one-at-a-time run is one of
# :throughput_runs when there were several.
def delivery_runs(r, *runs)
  extra = (r[:throughput_runs] || []).map { |x| ok_run(x) }
  (runs + extra).uniq(&:object_id)
end

def metrics(r, opts)
  t = ok_run(r[:throughput])
  b = ok_run(r[:burst])
  o = ok_run(r[:openloop])
  l = ok_run(r[:latency])
  ramp = r[:ramp] || {}
  held = ramp[:held]
  ping = ramp[:ping_at_held] || {}
  fresh = (r[:memory].is_a?(Array) ? r[:memory] : []).select { |x| x[:per_stream_kb] }
  st = r[:storm].is_a?(Hash) && r[:storm][:streams] ? r[:storm] : {}
  sw = r[:storm_workers].is_a?(Hash) && r[:storm_workers][:streams] ? r[:storm_workers] : {}
  gone = lambda do |key, timeout|
    x = r[key]
    x && !x[:error] && x[:released_s].nil? ? "> #{timeout}" : nil
  end
  {
    held: held && !ramp[:error] ? held : nil,
    held_note: if ramp[:error] then "error"
               elsif ramp[:capped] then "capped at #{ramp[:capped]} (Puma threads #{opts.live_threads})"
               elsif ramp[:failure] then "failed next step: #{ramp[:failure]}"
               elsif ramp[:last_step] && ramp[:last_step] == ramp[:max_tried] then "ramp limit"
               end,
    per_thread: held && r[:threads] ? held.to_f / r[:threads] : nil,
    ping_max: ping[:max_ms],
    ping_note: ping[:failed].to_i.positive? ? "#{ping[:failed]} of #{ping[:samples_ms].size} failed" : nil,
    mem_kb: ramp[:mem_per_stream_kb],
    mem_slope_kb: ramp[:mem_slope_kb],
    **fresh.to_h { |x| [:"mem_fresh_#{x[:size]}", x[:per_stream_kb]] },
    storm_p50: st.dig(:served_ms, "p50"),
    storm_p99: st.dig(:served_ms, "p99"),
    storm_max: st.dig(:served_ms, "max"),
    storm_all: st.dig(:served_from_start_ms, "max"),
    storm_head_max: st.dig(:served_from_head_ms, "max"),
    storm_cmds: st.dig(:redis, :calls),
    storm_redis_cpu: st.dig(:redis, :cpu_s)&.*(1000),
    storm_server_cpu: st[:server_cpu_s]&.*(1000),
    storm_served: st[:served],
    storm_streams: st[:streams],
    storm_missing: st[:missing],
    storm_dup: st[:dup],
    storm_by_command: st.dig(:redis, :by_command),
    storm_scripts: st.dig(:redis, :script_calls),
    storm_overflows: st[:listen_overflows],
    storm_w_p99: sw.dig(:served_ms, "p99"),
    storm_w_max: sw.dig(:served_ms, "max"),
    storm_w_all: sw.dig(:served_from_start_ms, "max"),
    storm_w_cmds: sw.dig(:redis, :calls),
    storm_w_server_cpu: sw[:server_cpu_s]&.*(1000),
    storm_w_served: sw[:served],
    storm_w_streams: sw[:streams],
    storm_w_missing: sw[:missing],
    storm_w_dup: sw[:dup],
    storm_w_overflows: sw[:listen_overflows],
    storm_w_backlog: sw[:backlog],
    dps1: t.dig(:lockstep, "deliveries_per_s"),
    dps100: b.dig(:lockstep, "deliveries_per_s"),
    dpsopen: o.dig(:loadgen, "deliveries_per_s"),
    p50: l.dig(:loadgen, "latency_ms", "p50"),
    p99: l.dig(:loadgen, "latency_ms", "p99"),
    fin: r.dig(:fin, :released_s),
    fin_note: gone.(:fin, opts.fin_timeout),
    release: r.dig(:vanish, :released_s),
    release_note: gone.(:vanish, opts.vanish_timeout),
    cpu1: t[:cpu_s_per_million],
    cpu100: b[:cpu_s_per_million],
    lost: delivery_runs(r, t, b, o, l).sum { |x| x.dig(:loadgen, "missing").to_i },
    dup: delivery_runs(r, t, b, o, l).sum { |x| x.dig(:loadgen, "dup").to_i },
    rounds1: (r[:throughput_runs] || []).map { |x| ok_run(x).dig(:lockstep, "deliveries_per_s") },
    busy1: [t[:server_busy], t.dig(:lockstep, "loadgen_cpu_busy")],
    busy100: [b[:server_busy], b.dig(:lockstep, "loadgen_cpu_busy")],
    busy_open: o.dig(:loadgen, "cpu_busy_in_window"),
    round1: t.dig(:lockstep, "round_ms", "p50"),
    round100: b.dig(:lockstep, "round_ms", "p50"),
    rt_p50: r.dig(:roundtrip, :p50_us),
    rt_p99: r.dig(:roundtrip, :p99_us),
    burst_as: b.dig(:lockstep, "mode") && (b.dig(:lockstep, "mode") == "app" ? "1 request count=#{opts.burst}" : "#{opts.burst} pipelined POSTs")
  }
end

METRICS = [
  [:held, "streams held by one process", 0, :higher],
  [:per_thread, "streams per app-server thread", 0, :higher],
  [:ping_max, "ordinary request while the streams are held, slowest of 5 (ms)", 1, :lower],
  [:mem_kb, "memory per open stream, ramp after a warm-up request (KiB RSS)", 2, :lower],
  [:mem_slope_kb, "memory per open stream, ramp slope from its first step to its last (KiB RSS)", 2, :lower],
  [:dps1, "deliveries/s, one message at a time (lockstep)", 0, :higher],
  [:dps100, "deliveries/s, bursts of 100 (lockstep)", 0, :higher],
  [:dpsopen, "deliveries/s, open loop (publish as fast as answered)", 0, :higher],
  [:p50, "latency p50 at 10 msg/s (ms)", 2, :lower],
  [:p99, "latency p99 at 10 msg/s (ms)", 2, :lower],
  [:fin, "client gone with FIN/RST: released after (s)", 2, :lower],
  [:release, "client gone silently: released after (s)", 1, :lower],
  [:rt_p50, "publish round trip in the app process, p50 (µs)", 0, :lower],
  [:rt_p99, "publish round trip in the app process, p99 (µs)", 0, :lower],
  [:cpu1, "server CPU s per million deliveries, one at a time", 2, :lower],
  [:cpu100, "server CPU s per million deliveries, bursts of 100", 2, :lower]
].freeze

NOTES_FOR = { ping_max: :ping_note, fin: :fin_note, release: :release_note }.freeze

# METRICS plus the rows whose labels depend on the run: the fresh-process
# memory at each size (after the ramp's rows) and the reconnect storm.
def metric_rows(opts)
  fresh = opts.fresh_sizes.map do |n|
    [:"mem_fresh_#{n}", "memory per open stream, fresh process, #{fmt(n)} streams opened at once (KiB RSS)", 2, :lower]
  end
  storm = "reconnect storm (#{fmt(opts.storm_streams)} streams resume #{opts.storm_messages} missed messages)"
  rows = METRICS.dup
  rows.insert(rows.index { |k, *| k == :mem_slope_kb } + 1, *fresh)
  rows.insert(rows.index { |k, *| k == :p99 } + 1,
              [:storm_p50, "#{storm}: a stream served after, p50 (ms from its connect)", 1, :lower],
              [:storm_p99, "#{storm}: a stream served after, p99 (ms)", 1, :lower],
              [:storm_max, "#{storm}: a stream served after, slowest (ms)", 1, :lower],
              [:storm_all, "#{storm}: first connect to the last stream served (ms)", 1, :lower],
              [:storm_head_max, "#{storm}: response head to served, slowest stream (ms)", 1, :lower],
              [:storm_cmds, "#{storm}: Redis commands", 0, :lower],
              [:storm_redis_cpu, "#{storm}: Redis CPU (ms)", 1, :lower],
              [:storm_server_cpu, "#{storm}: server CPU (ms)", 1, :lower])
  if opts.storm_workers > 1
    w = "#{storm} on Puma with #{opts.storm_workers} workers, backlog #{fmt([PUMA_BACKLOG, opts.storm_streams * 2].max)}"
    rows.insert(rows.index { |k, *| k == :storm_server_cpu } + 1,
                [:storm_w_p99, "#{w}: a stream served after, p99 (ms)", 1, :lower],
                [:storm_w_max, "#{w}: a stream served after, slowest (ms)", 1, :lower],
                [:storm_w_all, "#{w}: first connect to the last stream served (ms)", 1, :lower],
                [:storm_w_cmds, "#{w}: Redis commands", 0, :lower],
                [:storm_w_server_cpu, "#{w}: server CPU, all workers (ms)", 1, :lower])
  end
  rows
end

def results_table(results, m, opts)
  names = results.map { |r| r[:name] }
  out = +"| metric | #{names.join(' | ')} |\n|---|#{names.map { '---:' }.join('|')}|\n"
  metric_rows(opts).each do |key, label, digits, _dir|
    row = names.map { |n| (NOTES_FOR[key] && m[n][NOTES_FOR[key]]) || fmt(m[n][key], digits) }
    out << "| #{label} | #{row.join(' | ')} |\n"
  end
  pair = ->(a) { a.all?(&:nil?) ? "–" : "#{fmt(a[0], 2)} / #{fmt(a[1], 2)}" }
  out << "| messages missing (all delivery runs) | #{names.map { |n| fmt(m[n][:lost]) }.join(' | ')} |\n"
  out << "| duplicates (all delivery runs) | #{names.map { |n| fmt(m[n][:dup]) }.join(' | ')} |\n"
  if names.any? { |n| m[n][:storm_streams] }
    out << "| reconnect storm: streams served / missing messages / duplicates | " \
           "#{names.map { |n| m[n][:storm_streams] ? "#{fmt(m[n][:storm_served])} of #{fmt(m[n][:storm_streams])} / " \
                                                     "#{fmt(m[n][:storm_missing])} / #{fmt(m[n][:storm_dup])}" : '–' }.join(' | ')} |\n"
    out << "| reconnect storm: listen queue overflows (the machine's TcpExt ListenOverflows: handshakes dropped while the accept queue was full, each retried after 1 s or more) | " \
           "#{names.map { |n| fmt(m[n][:storm_overflows]) }.join(' | ')} |\n"
    out << "| reconnect storm: Redis commands by command (EVAL/EVALSHA among them) | " \
           "#{names.map { |n| storm_commands_s(m[n]) }.join(' | ')} |\n"
  end
  if names.any? { |n| m[n][:storm_w_streams] }
    out << "| reconnect storm on #{opts.storm_workers} Puma workers: streams served / missing / duplicates / " \
           "listen queue overflows | " \
           "#{names.map { |n| m[n][:storm_w_streams] ? "#{fmt(m[n][:storm_w_served])} of #{fmt(m[n][:storm_w_streams])} / " \
                                                       "#{fmt(m[n][:storm_w_missing])} / #{fmt(m[n][:storm_w_dup])} / " \
                                                       "#{fmt(m[n][:storm_w_overflows])}" : '–' }.join(' | ')} |\n"
  end
  if names.any? { |n| m[n][:rounds1].size > 1 }
    runs = names.map { |n| m[n][:rounds1].map { |v| v ? fmt(v) : "failed" }.join(", ").then { |x| x.empty? ? "–" : x } }
    out << "| deliveries/s, one at a time: every run, in order (the row above is their median) | #{runs.join(' | ')} |\n"
  end
  out << "| lockstep round p50 (ms), one at a time / burst | " \
         "#{names.map { |n| "#{fmt(m[n][:round1], 1)} / #{fmt(m[n][:round100], 1)}" }.join(' | ')} |\n"
  out << "| CPU busy server / loadgen, one at a time | #{names.map { |n| pair.(m[n][:busy1]) }.join(' | ')} |\n"
  out << "| CPU busy server / loadgen, bursts | #{names.map { |n| pair.(m[n][:busy100]) }.join(' | ')} |\n"
  out << "| CPU busy loadgen, open loop | #{names.map { |n| fmt(m[n][:busy_open], 2) }.join(' | ')} |\n"
  out << "| a burst is published as | #{names.map { |n| m[n][:burst_as] || '–' }.join(' | ')} |\n"
  out << "| load average at start | #{results.map { |r| r[:loadavg_start] }.join(' | ')} |\n"
  out
end

def run_notes(results, m)
  results.filter_map do |r|
    errs = %i[ramp memory throughput burst openloop latency storm fin vanish profile].filter_map do |k|
      "#{k}: #{r[k][:error]}" if r[k].is_a?(Hash) && r[k][:error]
    end
    (r[:memory].is_a?(Array) ? r[:memory] : []).each do |x|
      errs << "memory, fresh process, #{x[:size]} streams: #{x[:error]}#{x[:received] ? " (#{x[:received]} had it)" : ''}" if x[:error]
    end
    errs << "roundtrip: #{r[:roundtrip][:error]}" if r[:roundtrip].is_a?(Hash) && r[:roundtrip][:error]
    %i[throughput burst openloop latency].each do |k|
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
end

def ratio_s(a, b)
  return "–" unless a && b && b.to_f != 0

  q = a.to_f / b
  q >= 0.1 ? format("%.2f", q) : format("%.2g", q) # keep two significant digits of small ratios
end

# "xrange 5000, evalsha 5000 (5,000)": the commands of the storm, most first.
def storm_commands_s(mm)
  by = mm[:storm_by_command]
  return "–" unless by
  return "none" if by.empty?

  "#{by.first(4).map { |k, v| "#{k} #{fmt(v)}" }.join(', ')}#{by.size > 4 ? ', …' : ''} (#{fmt(mm[:storm_scripts])})"
end

def ratios_table(sw, names, m, opts)
  peers = names - [sw]
  out = +"Above 1 is better for Spillway where higher is better (streams, deliveries); below 1 is better " \
         "where lower is better (time, memory, latency, release, CPU).\n\n"
  out << "| metric | better | #{peers.join(' | ')} |\n|---|---|#{peers.map { '---:' }.join('|')}|\n"
  metric_rows(opts).each do |key, label, _d, dir|
    out << "| #{label} | #{dir} | #{peers.map { |p| ratio_s(m[sw][key], m[p][key]) }.join(' | ')} |\n"
  end
  out
end

def report(results, opts, started, finished, argv)
  m = results.to_h { |r| [r[:name], metrics(r, opts)] }
  mem = File.read("/proc/meminfo")[/MemTotal:\s+(\d+)/, 1].to_i / 1024
  out = +"# Spillway side-by-side benchmark\n\n"
  out << "Generated by `bench/run.rb` from a real run; nothing in this file is typed by hand " \
         "(except the dated profile notes it includes from `bench/PROFILE-NOTES.md`).\n\n"
  out << "- date: #{started.utc.iso8601} (#{(finished - started).round} s)\n"
  out << "- command: `ruby bench/run.rb #{argv.join(' ')}`\n"
  out << "- machine: `#{`uname -a`.strip}`, #{Etc.nprocessors} cores, #{mem} MiB, `ulimit -n` #{NOFILE}\n"
  out << "- mode: #{opts.quick ? 'quick (smoke; numbers are not comparable to a full run)' : 'full'}\n"
  out << "- streams for deliveries/latency: #{opts.streams}; lockstep: up to #{opts.lockstep_messages} messages " \
         "one at a time and #{opts.burst_messages} in bursts of #{opts.burst}, no new batch after " \
         "#{opts.lockstep_seconds} s once #{LOCKSTEP_MIN_ROUNDS} rounds / #{LOCKSTEP_MIN_BURSTS} bursts are done; " \
         "open loop: #{opts.messages}+ messages; latency: #{opts.rate} msg/s for #{opts.latency_seconds} s; " \
         "ramp up to #{opts.ramp_steps.last}; one-at-a-time lockstep: #{opts.rounds} run(s) per system, " \
         "interleaved, median reported\n"
  out << "- workloads: #{opts.workloads.join(', ')}#{opts.skipped.empty? ? '' : "; SKIPPED: #{opts.skipped.join('; ')}"}\n"
  out << "- versions: #{versions(opts).map { |k, v| "#{k} #{v}" }.join('; ')}\n\n"
  names = results.map { |r| r[:name] }
  out << "## Results\n\n" << results_table(results, m, opts)
  notes = run_notes(results, m)
  out << "\n#{notes.join("\n")}\n" unless notes.empty?

  sw = %w[spillway spillway-memory].find { |n| names.include?(n) }
  if sw
    out << "\n## Ratios #{sw} / peer\n\n" << ratios_table(sw, names, m, opts)
    out << "\n## Targets (issues #4 and #8)\n\n" << targets_section(names, m, results, opts)
  else
    out << "\n## Ratios\n\nNo Spillway result in this run (not selected), so no ratios and no targets.\n"
  end
  pairs = pairs_section(names, m, opts)
  out << "\n## Long-poll and PostgreSQL (issue #12)\n\n" << pairs if pairs
  out << "\n" << how_measured(opts)
  prof = profile_section(results)
  out << "\n" << prof if prof
  out
end

# The comparisons issue #12 asks for, each of two systems of the same run:
# Spillway's long-poll against message_bus's plain long-poll (the same
# servers as the streaming rows, clients that poll), and the PostgreSQL
# backend against the Redis one.
PAIRS = [
  ["spillway-lp", "message_bus-lp", %i[held mem_kb mem_slope_kb dps1 dps100 dpsopen p50 p99 cpu1 cpu100]],
  ["spillway-pg", "spillway", %i[dps1 dps100 dpsopen p50 p99 rt_p50 rt_p99 cpu1 cpu100 held mem_kb]],
  ["spillway-pg", "message_bus", %i[dps1 dps100 rt_p50 rt_p99]]
].freeze

def pairs_section(names, m, opts)
  rows = metric_rows(opts).to_h { |key, label, digits, dir| [key, [label, digits, dir]] }
  out = +""
  PAIRS.each do |a, b, keys|
    next unless names.include?(a) && names.include?(b)

    out << "**#{a} / #{b}**\n\n| metric | better | #{a} | #{b} | ratio |\n|---|---|---:|---:|---:|\n"
    keys.each do |k|
      label, digits, dir = rows.fetch(k)
      out << "| #{label} | #{dir} | #{fmt(m[a][k], digits)} | #{fmt(m[b][k], digits)} | #{ratio_s(m[a][k], m[b][k])} |\n"
    end
    out << "\n"
  end
  out.empty? ? nil : out
end

def how_measured(opts)
  <<~MD
    ## How each number is measured

    - **streams held**: one hold-mode `loadgen` adds streams in steps (#{opts.ramp_steps.first} at a time);
      after each step one message is published and every open stream must receive it. Held = the last
      step that passed; the ramp stops at the first failed step or at its limit (`ulimit -n` is #{NOFILE}, so
      #{opts.ramp_steps.last} is the most one process can be asked to hold here).
      Live needs one Puma thread and one Redis connection per stream, so its ramp is capped below its
      thread count.
    - **ordinary request while held**: after each ramp step, 5 × `GET /ping` (a plain Rack/nginx answer) on a
      fresh connection each, timed from connect to the whole answer; the table shows the slowest of the 5
      at the last step held.
    - **streams per app-server thread**: held / request threads of the server (Puma `-t 1:1` for
      Spillway and message_bus; one nginx worker; the ceiling's one thread; Live: its Puma threads).
    - **memory per open stream**, three ways, all VmRSS of the server process from `/proc/<pid>/status`,
      user-space memory only (the kernel's socket buffers are not in RSS, which is why the ceiling, which
      keeps one slot per stream, shows almost 0); the streams are idle:
      - *ramp after a warm-up request* (the issue #4 figure): (RSS at the ramp's last held step - RSS after
        one publish on a channel nobody listens to, before the first stream) / streams held. It includes the
        first step's jump (a Ruby process's heap grows while it serves the first #{fmt(opts.ramp_steps.first)} requests).
      - *ramp slope*: (RSS at the last held step - RSS at the first) / (streams at the last - at the first):
        what one more stream costs a process that is already warm.
      - *fresh process*: what a user sees who boots the server and opens N streams
        (#{opts.fresh_sizes.map { |n| fmt(n) }.join(' and ')}) in one go: (RSS once every stream has its first
        body byte - RSS of the freshly booted process before any request, read once it stops moving) / N.
        Each size on a new server; `loadgen -c N -k 256`, no warm-up, nothing published before the RSS
        sample (then one message, which every stream must get). It includes the garbage of the requests
        that opened the streams that the GC has not given back, and one-off costs (Spillway's hub thread
        starts with the first stream). Live is capped at its thread count.
    - **deliveries/s, lockstep** (the two rows issue #4 asks for): #{opts.streams} streams on one channel; the
      `loadgen` itself publishes (`-P`, its own keep-alive connection) #{opts.burst} messages back to back, or one, and
      the next batch only when every open stream has received every message published so far, so no
      system can coalesce across batches. Apps get one `POST /pub?count=K` (the app stamps and publishes K
      messages); nchan and the ceiling, which take the message body as is, get K pipelined POSTs in one
      write. Deliveries/s = streams × messages of the complete batches / (last receive of the last batch -
      the write of the first). The run starts no new batch after #{opts.lockstep_seconds} s once at least
      #{LOCKSTEP_MIN_ROUNDS} rounds (one at a time) or #{LOCKSTEP_MIN_BURSTS} bursts are complete.
      One at a time, where Spillway and the ceiling are close, each system is run #{opts.rounds} time(s): once in
      its turn, then in rounds that take every system again in the same order (each on a fresh server), so
      that a busy minute on the machine does not fall on one system only; the row is the median run (the
      lower middle for an even count), its CPU and busy figures are that run's, and every run is listed
      under the table (`--rounds N`).
    - **deliveries/s, open loop** (what a real app does; not an issue #4 row): `pubgen` publishes one message per
      request and sends the next when the answer is in. nchan and the ceiling answer after their fan-out,
      so this paces them message by message; live, message_bus and Spillway answer once the message is
      handed on (Redis, or the hub's queue), so messages queue up and Spillway batches every pending frame
      of a socket into one write. Counted at the streams from the first publish stamp to the last receive;
      a window under #{MIN_WINDOW_S} s is repeated with more messages (up to #{MAX_MESSAGES}).
    - **long-poll systems** (`spillway-lp`, `message_bus-lp`; issue #12): the same servers as `spillway` and
      `message_bus`, clients that poll instead of streaming. Spillway: `GET /stream?channel=C&transport=long-poll`,
      answered with a complete SSE body once a message after the cursor exists, then closed; the loadgen
      polls again at once with `Last-Event-ID` = the answer's last id (`-m lp`). The first poll carries
      `Spillway.cursor` (`GET /cursor` of the peer), and a poll counts as held once its request is out.
      message_bus: its client protocol with `Dont-Chunk: true`, as its JavaScript client sends with
      `enableChunkedEncoding: false`: one JSON array per poll, then closed (`-m mb-lp`). Every delivery is
      then one answer and one new connection per client, for both. *Streams held* is held long-polls (each
      ramp step's message makes every one of them answer and poll again).
    - **publish round trip** (`roundtrip`): #{opts.quick ? 300 : 3000} publishes one after the other inside the app
      process (`POST /pubtime`), each timed from the call to its return, on a channel nobody listens to:
      `Spillway.publish` (Redis: one script and its answer; PostgreSQL (`spillway-pg`, a PostgreSQL 15 the
      bench initializes with fsync and synchronous_commit off, like its Redis that saves nothing): one
      INSERT + NOTIFY statement and its answer; memory: in process) and `MessageBus.publish`.
    - **CPU busy server / loadgen**: CPU seconds over the lockstep window. This VM has #{Etc.nprocessors} cores; when
      both are near 1.00 the machine is the limit (one loopback delivery costs the sender ~5 µs and the
      receiver ~5 µs of kernel time), and a second loadgen process would only share the same cores.
    - **latency**: #{opts.streams} streams, #{opts.rate} messages/s for #{opts.latency_seconds} s (open loop, fixed schedule);
      publish-to-receive from the CLOCK_REALTIME stamp at the start of each message (stamped by the app right
      before its publish call, or by `pubgen` right before write() for nchan and the ceiling).
    - **reconnect storm** (issue #8; #{STORM_SYSTEMS.join(', ')}: the ceiling and Live keep no history to
      resume from): on a fresh server and Redis, one message (seq 1) is published on a new channel and its id
      taken as each system hands it out (Spillway: `Spillway.publish`'s return value, the SSE `id:`;
      message_bus: `MessageBus.publish`'s message id, which its client polls from; nchan: "last message id"
      in the publisher's answer, the SSE `id:` it takes back as `Last-Event-ID`), then
      #{opts.storm_messages} more (seqs 2..#{opts.storm_messages + 1}), every publish answered. Then one `loadgen` opens
      #{fmt(opts.storm_streams)} streams in the same loop iteration (`-k #{opts.storm_streams}`), every one resuming after the
      first message (SSE: `Last-Event-ID`; message_bus: a poll from that id), and records when each has all
      #{opts.storm_messages}; it stops once every stream has them plus #{STORM_LINGER_S} s, so that a duplicate sent
      right after still counts. *A stream served after* = from that stream's `connect()` to its last missed
      message, what each client sees; *first connect to the last stream served* = the whole storm, which
      also holds the loadgen's own time to issue #{fmt(opts.storm_streams)} `connect()`s one after the other (the
      clients of a real storm do that in parallel); *response head to served* leaves out the wait in the
      accept queue (Puma's listen backlog is 4096: past that a SYN is dropped and retried after 1 s, the
      same for every system; the table counts those drops, machine-wide, from `/proc/net/netstat`).
      *Redis commands* = the difference of `INFO commandstats` right before the loadgen starts and right
      after it ends, without those INFOs: every command Redis executed, those a Lua script runs with
      `redis.call` included (they are counted besides the EVAL/EVALSHA that ran them; the by-command row
      names both). *Redis CPU* = used_cpu_user + used_cpu_sys of `INFO cpu` over the same span; server
      CPU from `/proc/<pid>/stat`. Missing = owed messages never received, duplicates = messages received
      twice plus messages from before the cursor (the client had them). message_bus's client polls
      again once a poll has answered; those polls within the span count too. *On Puma with W workers*
      (Spillway with Redis only; `--storm-workers`, one per core by default): the same storm on `puma -w W
      -t 1:1` with a listen backlog of twice the storm (net.core.somaxconn raised to it for the run when
      the bench may, and put back), the way a production Puma is deployed: one process accepts about
      3,000 connections a second here (Puma's accept, parse and hand-off take about 0.3 ms of CPU per
      connection; Spillway's middleware about 0.01 ms), so one `-t 1:1` process cannot take 5,000 streams
      within a second, whatever serves them. The pubgen sends each message's seq (`&seq=`), so the workers
      number them as one.
    - **client gone with FIN/RST**: one stream from 127.0.0.#{FIN_ADDR}; the client process is killed (its kernel sends
      FIN, or RST) while a message a second is published; the time until the server has no ESTABLISHED or
      CLOSE-WAIT socket to that address (`ss`, polled every 10 ms). "> N" = not within N s.
    - **client gone silently**: one stream from 127.0.0.#{VANISH_ADDR}; iptables drops every packet to and from that
      address on lo, the client is killed (its FIN is dropped too) and a message a second is published;
      the time until the server has no ESTABLISHED socket to that address (`ss`). "> N" = not within N s.
      Needs root (iptables); without it the workload is listed as SKIPPED above.
    - **CPU per million deliveries**: utime+stime of the server process (`/proc/<pid>/stat`) over the
      lockstep run / deliveries × 10^6. Redis's own CPU is in the JSON.
    - Every workload runs on a fresh server process (and a fresh Redis); Redis runs with
      `client-output-buffer-limit pubsub 0 0 0` and no persistence.
    - Server, Redis, `loadgen` and `pubgen` share the #{Etc.nprocessors} cores, so absolute numbers are
      machine-bound; the ratios are the point. Raw numbers: `#{File.basename(opts.output, '.md')}.json`.
  MD
end
