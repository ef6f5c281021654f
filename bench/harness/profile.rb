# frozen_string_literal: true

# Part of bench/run.rb: where the server's CPU goes in the lockstep
# one-at-a-time run (5,000 streams by default), from `perf record -g` attached
# to the server process for the whole run. A separate run on a fresh server:
# the sampling costs a few percent, so the measured runs stay unprofiled.
#
# The ceiling is profiled too, as the reference: everything it does per
# delivery is the least any server can do (one send() per stream).

PROFILED = %w[ceiling spillway spillway-memory].freeze
PERF_FREQ = 4000 # Hz; cpu-clock samples (hardware counters are not available in this VM)

def perf_usable?
  return @perf_usable unless @perf_usable.nil?

  Dir.mktmpdir do |d|
    @perf_usable = system("perf", "record", "-q", "-o", File.join(d, "probe.data"), "--", "true",
                          out: File::NULL, err: File::NULL)
  end
end

# perf report rows: [[percent, samples, symbol-or-key], ...]
def perf_rows(data, *args)
  out = IO.popen(["perf", "report", "-i", data, "--stdio", "-n", "-g", "none", *args], err: File::NULL, &:read)
  out.lines.filter_map do |l|
    next if l.start_with?("#") || l.strip.empty?

    f = l.strip.split(/\s+/, 3)
    next unless f[0]&.end_with?("%") && f[1] =~ /\A\d+\z/

    [f[0].to_f, f[1].to_i, f[2].to_s.strip]
  end
end

# --children rows carry two percentages (children, self): [[children%, self%, samples, key], ...]
def perf_children_rows(data, *args)
  out = IO.popen(["perf", "report", "-i", data, "--stdio", "-n", "-g", "none", "--children", *args],
                 err: File::NULL, &:read)
  out.lines.filter_map do |l|
    f = l.strip.split(/\s+/, 4)
    next unless f.size == 4 && f[0].end_with?("%") && f[1].end_with?("%") && f[2] =~ /\A\d+\z/

    [f[0].to_f, f[1].to_f, f[2].to_i, f[3].sub(/\A\[.\]\s+/, "").strip]
  end
end

# Kernel entry points and what they stand for. Shares are "children"
# (inclusive) percentages of all samples of the server process.
PROFILE_PATHS = [
  ["__sys_sendmsg", "sendmsg(): the TCP send path, including the loopback receive half"],
  ["__sys_sendto", "send(): the TCP send path, including the loopback receive half"],
  ["ksys_write", "write()"],
  ["net_rx_action", "of which the loopback receive half: the client socket's side of each segment " \
                    "(a real network moves it to the client machine)"],
  ["do_epoll_wait", "epoll_wait()"],
  ["ksys_read", "read()"],
  ["__sys_recvfrom", "recv()"],
  ["do_futex", "futex(): locks, the GVL, condition variables"],
  ["__schedule", "context switches"]
].freeze

def profile_run(srv, opts, tmp)
  return { error: "perf is not usable here (perf record failed)" } unless perf_usable?

  data = File.join(srv.dir, "perf.data")
  perf = nil
  on_go = lambda do
    perf = Process.spawn("perf", "record", "-g", "-F", PERF_FREQ.to_s, "-o", data, "-p", srv.pid.to_s,
                         out: File.join(srv.dir, "perf.log"), err: [:child, :out])
    # perf prints nothing when it is attached; give it a moment to open its events.
    sleep 0.5
  end
  on_done = lambda do
    Process.kill("INT", perf)
    Process.wait(perf)
  end
  run = lockstep_run(srv, opts, tmp, channel: "profile", k: 1, on_go: on_go, on_done: on_done)
  return run if run[:error]
  return { error: "perf wrote no data" } unless File.size?(data)

  total = perf_rows(data, "--no-children", "--sort", "dso").sum { |r| r[1] }
  delivered = run.dig(:lockstep, "deliveries").to_i
  sampled_cpu = total.to_f / PERF_FREQ
  us = ->(pct) { delivered.positive? ? (sampled_cpu * pct / 100 * 1e6 / delivered).round(3) : nil }
  dsos = perf_rows(data, "--no-children", "--sort", "dso").first(8).map { |p, n, k| { dso: k, pct: p, samples: n, us_per_delivery: us.(p) } }
  # The hub's pthread inherits the name of the Ruby thread that started it:
  # it is the thread with the most samples in spillway_ext.so.
  hub = perf_rows(data, "--no-children", "--sort", "pid,dso").select { |r| r[2].end_with?("spillway_ext.so") }
                                                               .max_by { |r| r[1] }&.then { |r| r[2][/\A\d+/] }
  threads = perf_rows(data, "--no-children", "--sort", "pid").first(6).map do |p, n, k|
    { thread: hub && k.start_with?("#{hub}:") ? "#{k} (the hub)" : k, pct: p, samples: n }
  end
  syms = perf_rows(data, "--no-children", "--sort", "dso,sym").first(25).map do |p, n, k|
    { symbol: k.sub(/\s+\[.\]\s+/, " "), pct: p, us_per_delivery: us.(p) }
  end
  own = perf_rows(data, "--no-children", "--sort", "sym", "--dsos", "spillway_ext.so").first(15).map do |p, _n, k|
    { symbol: k.sub(/\A\[.\]\s+/, ""), pct: p, us_per_delivery: us.(p) }
  end
  children = perf_children_rows(data, "--sort", "sym")
  paths = PROFILE_PATHS.filter_map do |sym, what|
    row = children.find { |r| r[3] == sym }
    next unless row && row[0] >= 0.5

    { entry: sym, what: what, pct: row[0], us_per_delivery: us.(row[0]) }
  end
  {
    command: "perf record -g -F #{PERF_FREQ} -p <server pid>, attached for the lockstep one-at-a-time run " \
             "(#{opts.streams} streams, `ruby bench/run.rb --workloads profile`)",
    date: Time.now.utc.iso8601, samples: total, sampled_cpu_s: sampled_cpu.round(3),
    deliveries: delivered, deliveries_per_s: run.dig(:lockstep, "deliveries_per_s"),
    server_cpu_s: run[:server_cpu_s], us_per_delivery: delivered.positive? ? (run[:server_cpu_s] * 1e6 / delivered).round(3) : nil,
    dsos: dsos, threads: threads, top_symbols: syms, own_symbols: own, paths: paths, run: run.except(:loadgen)
  }
ensure
  if perf && (Process.kill(0, perf) rescue false)
    Process.kill("INT", perf) rescue nil
    Process.wait(perf) rescue nil
  end
end
