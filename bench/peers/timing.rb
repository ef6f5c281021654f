# frozen_string_literal: true

# Shared by the peer apps: times n calls of the block, one after the other,
# and answers their percentiles in µs (the publish round trip of /pubtime).
def time_calls(n)
  t = Array.new(n) do |i|
    t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond)
    yield i
    (Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond) - t0) / 1000.0
  end.sort
  pick = ->(q) { t[[(q * n).ceil - 1, 0].max].round(1) }
  { calls: n, p50_us: pick.(0.5), p90_us: pick.(0.9), p99_us: pick.(0.99), max_us: t.last.round(1),
    mean_us: (t.sum / n).round(1) }
end
