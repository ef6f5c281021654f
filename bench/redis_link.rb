# frozen_string_literal: true

# Micro-benchmark of the Redis backend's own numbers, in one process:
#
#   publish round trip      Spillway.publish (sync) one after the other: latency per call
#   messages through a link async publishes pipelined on the hub's command link, and the same
#                           messages read back on its subscriber link into one stream
#   recovery after a kill   CLIENT KILL TYPE pubsub while 1,000 messages/s flow: time until the
#                           gap is repaired and until the first message after the kill arrives
#
#   ruby -Ilib bench/redis_link.rb [--quick]
#
# Starts its own redis-server on a free port. Prints a Markdown table; nothing is typed by hand.
require "socket"
require "tmpdir"
require "spillway"

QUICK = ARGV.include?("--quick")

def now
  Process.clock_gettime(Process::CLOCK_MONOTONIC)
end

def wait_for(timeout, what)
  deadline = now + timeout
  until (v = yield)
    raise "timed out waiting for #{what}" if now > deadline

    sleep 0.0005
  end
  v
end

def pct(sorted, q)
  sorted[[(sorted.size * q).ceil - 1, 0].max]
end

# redis-server on a free port.
dir = Dir.mktmpdir("spillway-bench-redis")
port = TCPServer.new("127.0.0.1", 0).then { |s| p = s.addr[1]; s.close; p }
redis_pid = Process.spawn("redis-server", "--port", port.to_s, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                          "--dir", dir, out: File::NULL, err: File::NULL)
at_exit do
  Process.kill("TERM", redis_pid)
  Process.wait(redis_pid)
end
wait_for(10, "redis-server") do
  TCPSocket.new("127.0.0.1", port).close
  true
rescue SystemCallError
  false
end
url = "redis://127.0.0.1:#{port}"
Spillway.configure(redis_url: url, async_limit: 1_000_000, queue_limit: 1_000_000, outbox_limit: 256 * 1024 * 1024)

# A stream read by this process: one end of a socket pair attached to the hub.
class Stream
  attr_reader :count

  def initialize(channel)
    @ours, theirs = UNIXSocket.pair
    hub = Spillway.hub
    hub.reserve or raise "full"
    hub.attach(theirs, [channel], nil, Spillway::Native::Hub::ATTACH_HEAD)
    theirs.close
    @count = 0
    @buf = +""
  end

  # Counts "\nid: "-started frames seen so far (reads what is there).
  def pump
    loop do
      chunk = @ours.read_nonblock(1 << 20, exception: false)
      break if chunk == :wait_readable || chunk.nil?

      @buf << chunk
      @count += @buf.scan(/^id: /).size
      @buf = @buf[(@buf.rindex("\n") || -1) + 1..] || +""
    end
    @count
  end
end

results = []

# 1. Publish round trip.
n = QUICK ? 2_000 : 20_000
Spillway.publish("rt", "warm")
lat = Array.new(n) do |i|
  t0 = now
  Spillway.publish("rt", "message #{i}")
  now - t0
end.sort
results << ["publish round trip, p50 / p99 (µs)", format("%.0f / %.0f", pct(lat, 0.5) * 1e6, pct(lat, 0.99) * 1e6)]
results << ["sync publishes/s, one thread", format("%.0f", n / lat.sum)]

# 2. Messages through one link.
n = QUICK ? 20_000 : 200_000
stream = Stream.new("link")
wait_for(10, "stream live") { Spillway.stats[:joining].zero? && Spillway.stats[:redis_connected] }
t0 = now
n.times { |i| Spillway.publish_async("link", "m#{i}") }
queued = now
Spillway.flush(timeout: 120) or raise "flush timed out"
acked = now
wait_for(120, "#{n} messages read back") { stream.pump >= n }
received = now
results << ["async publishes/s into Redis (one command link, pipelined)", format("%.0f", n / (acked - t0))]
results << ["messages/s through the subscriber link into one stream", format("%.0f", n / (received - t0))]
results << ["  (Ruby side: #{n} publish_async calls took, s)", format("%.3f", queued - t0)]

# 3. Recovery after a kill.
rate = 1000
flow = Stream.new("flow")
wait_for(10, "stream live") { Spillway.stats[:joining].zero? }
stop = false
sent = 0
pub = Thread.new do
  t = now
  until stop
    Spillway.publish("flow", "n#{sent += 1}")
    t += 1.0 / rate
    sleep [t - now, 0].max
  end
end
wait_for(10, "flow") { flow.pump >= rate / 2 }
repairs = Spillway.stats[:gap_repairs]
admin = TCPSocket.new("127.0.0.1", port)
admin.write("*4\r\n$6\r\nCLIENT\r\n$4\r\nKILL\r\n$4\r\nTYPE\r\n$6\r\npubsub\r\n")
killed_at = now
admin.readpartial(64)
before = flow.pump
first_after = wait_for(30, "a message after the kill") { flow.pump > before && now }
repaired = wait_for(30, "gap repair") { Spillway.stats[:gap_repairs] > repairs && now }
stop = true
pub.join
wait_for(30, "every message") { flow.pump >= sent }
results << ["recovery after CLIENT KILL pubsub: gap repaired after (ms)", format("%.1f", (repaired - killed_at) * 1000)]
results << ["  first message after the kill delivered after (ms)", format("%.1f", (first_after - killed_at) * 1000)]
results << ["  messages lost / duplicated at #{rate}/s", "#{sent - flow.count} / #{[flow.count - sent, 0].max}"]

puts "| Redis backend (#{QUICK ? 'quick' : 'full'}, #{`redis-server --version`[/v=(\S+)/, 1]}, #{`nproc`.strip} cores) | |"
puts "|---|---:|"
results.each { |k, v| puts "| #{k} | #{v} |" }
Spillway.shutdown
