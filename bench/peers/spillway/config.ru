# The Spillway target, through the gem's public API only.
#
#   GET  /stream?channel=C         Spillway::Middleware: SSE from the native hub
#   POST /pub?channel=C&count=K    Spillway.publish K times; the data of each is
#                                  "<seq> <t_ns> <body>", stamped right before
#                                  its publish call
#   GET  /stats                    Spillway.stats as JSON
#   GET  /ping                     an ordinary request ("pong"), timed by the
#                                  harness while the streams are held
#
# Run: [REDIS_URL=redis://127.0.0.1:PORT] puma -t 1:1 -b tcp://127.0.0.1:PORT
# Without REDIS_URL Spillway uses its in-process memory backend.
require "json"
require "spillway"

Spillway.configure(redis_url: ENV["REDIS_URL"])

SEQ = Hash.new(0)
SEQ_LOCK = Mutex.new

use Spillway::Middleware

run lambda { |env|
  req = Rack::Request.new(env)
  case req.path_info
  when "/pub"
    channel = req.params["channel"] or return [400, {}, ["channel?\n"]]
    count = (req.params["count"] || 1).to_i
    pad = req.body.read
    pad = " #{pad}" unless pad.empty?
    last = nil
    SEQ_LOCK.synchronize do
      count.times do
        seq = (SEQ[channel] += 1)
        last = Spillway.publish(channel,
                                "#{seq} #{Process.clock_gettime(Process::CLOCK_REALTIME, :nanosecond)}#{pad}")
      end
    end
    body = "#{last}\n"
    [200, { "content-type" => "text/plain", "content-length" => body.bytesize.to_s }, [body]]
  when "/ping"
    [200, { "content-type" => "text/plain", "content-length" => "5" }, ["pong\n"]]
  when "/stats"
    body = JSON.generate(Spillway.stats)
    [200, { "content-type" => "application/json", "content-length" => body.bytesize.to_s }, [body]]
  else
    [404, { "content-length" => "0" }, []]
  end
}
