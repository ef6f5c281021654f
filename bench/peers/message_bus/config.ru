# The message_bus peer (discourse/message_bus 4.x, Redis backend) on Puma.
#
#   POST /message-bus/<client_id>/poll   message_bus's own client protocol:
#                                        form body "<channel>=<last id>&__seq=N",
#                                        hijacked socket, chunked JSON arrays
#                                        separated by "\r\n|\r\n" (streaming long
#                                        poll), closed after long_polling_interval
#                                        (25 s by default), then the client polls
#                                        again from its last id.
#   POST /pub?channel=C&count=K          MessageBus.publish("/C", data) K times; the
#                                        data of each is "<seq> <t_ns> <body>",
#                                        stamped right before its publish. Answers
#                                        the message id of the last one (the
#                                        reconnect storm resumes from it).
#   POST /pubtime?channel=C&count=N      N MessageBus.publish calls one after the
#                                        other, each timed (µs percentiles, JSON)
#   GET  /ping                           an ordinary request ("pong"), timed by
#                                        the harness while the streams are held
#
# Run: REDIS_URL=redis://127.0.0.1:PORT puma -t 1:1 -b tcp://127.0.0.1:PORT
require "json"
require_relative "../timing"
require "message_bus"
require "logger"

MessageBus.configure(backend: :redis, url: ENV.fetch("REDIS_URL"))
# The default cap is 1000 long polls per process; past it message_bus answers
# at once and the client falls back to polling. Raise it so the process can
# hold as many streams as it is able to.
MessageBus.configure(max_active_clients: Integer(ENV.fetch("MB_MAX_ACTIVE_CLIENTS", "20000")))
# Left at message_bus's default (25 s) unless the harness asks otherwise.
if (ms = ENV["MB_LONG_POLLING_INTERVAL_MS"])
  MessageBus.configure(long_polling_interval: Integer(ms))
end
MessageBus.logger = Logger.new($stderr, level: Logger::WARN)

SEQ = Hash.new(0)
SEQ_LOCK = Mutex.new

use MessageBus::Rack::Middleware

run lambda { |env|
  req = Rack::Request.new(env)
  return [200, { "content-type" => "text/plain", "content-length" => "5" }, ["pong\n"]] if req.path_info == "/ping"

  if req.path_info == "/pubtime"
    channel = req.params["channel"] or return [400, {}, ["channel?\n"]]
    n = (req.params["count"] || 1000).to_i.clamp(1, 100_000)
    body = JSON.generate(time_calls(n) { |i| MessageBus.publish("/#{channel}", "#{i + 1} 0") })
    return [200, { "content-type" => "application/json", "content-length" => body.bytesize.to_s }, [body]]
  end

  if req.path_info == "/pub"
    channel = req.params["channel"] or return [400, {}, ["channel?\n"]]
    count = (req.params["count"] || 1).to_i
    pad = req.body.read
    pad = " #{pad}" unless pad.empty?
    last = nil
    SEQ_LOCK.synchronize do
      count.times do
        seq = (SEQ[channel] += 1)
        last = MessageBus.publish("/#{channel}",
                                  "#{seq} #{Process.clock_gettime(Process::CLOCK_REALTIME, :nanosecond)}#{pad}")
      end
    end
    body = "#{last}\n"
    [200, { "content-type" => "text/plain", "content-length" => body.bytesize.to_s }, [body]]
  else
    [404, { "content-length" => "0" }, []]
  end
}
