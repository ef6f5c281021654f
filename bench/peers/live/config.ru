# The "live" peer: what ActionController::Live + redis.subscribe does, as a
# plain Rack app, so the comparison carries no Rails overhead.
#
#   GET  /stream?channel=C        SSE. The request holds its Puma thread for
#                                 the life of the stream and blocks in a
#                                 redis-rb SUBSCRIBE on its own Redis
#                                 connection (one thread + one Redis
#                                 connection per open stream).
#   POST /pub?channel=C&count=K   publishes K messages with Redis PUBLISH; the
#                                 data of each is "<seq> <t_ns> <body>",
#                                 stamped right before its PUBLISH.
#   GET  /ping                    an ordinary request ("pong"), timed by the
#                                 harness while the streams are held
#
# Run: REDIS_URL=redis://127.0.0.1:PORT [LIVE_PUB_PORT=P2] puma -t 0:N -b tcp://127.0.0.1:PORT
# The thread count caps the streams: it needs one Puma thread per stream.
#
# With LIVE_PUB_PORT the same /pub is also served by a plain thread of this
# process on that port, outside Puma's pool. The harness publishes there:
# near a full pool Puma leaves requests queued (that is this design's failure
# mode, rails/rails#10989), and the benchmark wants the fan-out rate of the
# streams that are open, not a publisher stuck behind them.
require "redis"
require "socket"

REDIS_URL = ENV.fetch("REDIS_URL")

# One publishing connection shared by the request threads.
PUB = Redis.new(url: REDIS_URL)
PUB_LOCK = Mutex.new
SEQ = Hash.new(0)

class LiveStream
  def initialize(channel, socket)
    @channel = channel
    @socket = socket
  end

  def each
    # Puma sets TCP_CORK for the length of a response, which would hold small
    # frames back for up to 200 ms. A stream wants every frame out at once.
    @socket.setsockopt(Socket::IPPROTO_TCP, Socket::TCP_CORK, 0) if @socket.is_a?(TCPSocket)
    redis = Redis.new(url: REDIS_URL, timeout: 5, read_timeout: nil)
    redis.subscribe(@channel) do |on|
      # Say something only once Redis confirmed the subscription, so a client
      # that saw the first bytes cannot miss a message published after that.
      on.subscribe { yield ": subscribed\n\n" }
      on.message { |_ch, data| yield "data: #{data}\n\n" }
    end
  ensure
    redis&.close
  end
end

def publish_stamped(channel, count, pad)
  pad = " #{pad}" unless pad.empty?
  PUB_LOCK.synchronize do
    count.times do
      seq = (SEQ[channel] += 1)
      PUB.publish(channel, "#{seq} #{Process.clock_gettime(Process::CLOCK_REALTIME, :nanosecond)}#{pad}")
    end
  end
end

# Minimal HTTP/1.1 keep-alive server for POST /pub?channel=C&count=K.
def serve_pub(sock)
  buf = +""
  loop do
    head_end = nil
    until (head_end = buf.index("\r\n\r\n"))
      buf << sock.readpartial(65_536)
    end
    head = buf.slice!(0, head_end + 4)
    length = head[/^content-length:\s*(\d+)/i, 1].to_i
    buf << sock.readpartial(65_536) while buf.bytesize < length
    body = buf.slice!(0, length)
    query = head[%r{\A\w+ /pub\?(\S*) HTTP}, 1]
    if query
      params = Rack::Utils.parse_query(query)
      count = (params["count"] || 1).to_i
      publish_stamped(params["channel"], count, body)
      out = "#{count}\n"
      sock.write("HTTP/1.1 200 OK\r\nContent-Length: #{out.bytesize}\r\n\r\n#{out}")
    else
      sock.write("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    end
  end
rescue EOFError, IOError, SystemCallError
  nil
ensure
  sock.close
end

if (pub_port = ENV["LIVE_PUB_PORT"])
  pub_server = TCPServer.new("127.0.0.1", Integer(pub_port))
  Thread.new do
    loop { Thread.new(pub_server.accept) { |s| serve_pub(s) } }
  end
end

run lambda { |env|
  req = Rack::Request.new(env)
  case req.path_info
  when "/ping"
    [200, { "content-type" => "text/plain", "content-length" => "5" }, ["pong\n"]]
  when "/stream"
    channel = req.params["channel"] or return [400, {}, ["channel?\n"]]
    [200, { "content-type" => "text/event-stream", "cache-control" => "no-cache" },
     LiveStream.new(channel, env["puma.socket"])]
  when "/pub"
    channel = req.params["channel"] or return [400, {}, ["channel?\n"]]
    count = (req.params["count"] || 1).to_i
    publish_stamped(channel, count, req.body.read)
    body = "#{count}\n"
    [200, { "content-type" => "text/plain", "content-length" => body.bytesize.to_s }, [body]]
  else
    [404, { "content-length" => "0" }, []]
  end
}
