# frozen_string_literal: true

require "spec_helper"
require "openssl"
require "rack"

# The configured `headers` (CORS and the like) on every transport: the
# native head, the TLS pump (the hub writes the head too), WEBrick's partial
# hijack and servers without hijack (the Rack response carries the head).
RSpec.describe "Configured response headers" do
  let(:configured) { { "Access-Control-Allow-Origin" => "https://app.example", "X-Spillway-Test" => "on every stream" } }
  let(:expected) do
    configured.to_h { |k, v| [k.downcase, v] }.merge("content-type" => "text/event-stream; charset=utf-8")
  end

  def raw_head(sock)
    head = +"".b
    wait_until(message: "response head (#{head.inspect})") do
      chunk = sock.read_nonblock(4096, exception: false)
      raise "closed before the head: #{head.inspect}" if chunk.nil?

      head << chunk if chunk.is_a?(String)
      head.include?("\r\n\r\n")
    end
    lines = head.split("\r\n\r\n", 2).first.split("\r\n")
    [Integer(lines.shift.split(" ")[1]), lines.to_h { |l| k, v = l.split(":", 2); [k.downcase, v.strip] }]
  end

  def check_stream(server)
    client = SSEClient.open(server.port, "hdr:one")
    client.wait_for_head
    expect(client.status).to eq(200)
    expect(client.headers).to include(expected)
    wait_until(message: "stream attached") { server.stats[:connections] == 1 }
    server.publish("hdr:one", "hello")
    expect(client.wait_for_events(1).map(&:data)).to eq(["hello"])
  ensure
    client&.close
    wait_until(message: "stream released") { server.stats[:connections].zero? }
  end

  it "are on the native head (Puma, full hijack)" do
    server = AppServer.new(config: { headers: configured }).start
    check_stream(server)
    expect(server.stats[:fallback_total]).to eq(0)
  ensure
    server&.stop
  end

  it "are on the partial-hijack head (WEBrick)" do
    server = AppServer.new(puma: :webrick, config: { headers: configured, heartbeat: 0.5 }).start
    check_stream(server)
    expect(server.stats[:fallback_total]).to eq(1)
  ensure
    server&.stop
  end

  it "frame a WEBrick stream as close-delimited, which a client that honours Content-Length reads" do
    # rackup puts Rack::ContentLength in front of the app: an empty Array
    # body got "content-length: 0" and a keep-alive connection, an empty
    # response to any real client.
    server = AppServer.new(puma: :webrick, config: { heartbeat: 0.5 }).start
    received = +""
    reader = Thread.new do
      # throw, not break: after the block Net::HTTP would read the body to
      # its end, and a stream has none.
      catch(:framed) do
        Net::HTTP.start("127.0.0.1", server.port, read_timeout: 10) do |http|
          http.request_get("/stream?channel=hdr:frame") do |res|
            Thread.current[:head] = res.to_hash
            res.read_body do |chunk|
              received << chunk
              throw :framed if received.include?("data: framed")
            end
          end
        end
      end
    end
    wait_until(message: "stream attached") { server.stats[:connections] == 1 || !reader.alive? }
    server.publish("hdr:frame", "framed") if reader.alive?
    reader.join(10)
    expect(reader[:head]).not_to have_key("content-length")
    expect(reader[:head]["connection"]).to eq(["close"])
    expect(received).to include("data: framed")
    wait_until(message: "stream released") { server.stats[:connections].zero? }
  ensure
    reader&.kill
    server&.stop
  end

  it "are on the head Puma sends through the TLS pump" do
    tls = SelfSigned.files
    server = AppServer.new(config: { headers: configured },
                           tls: tls).start
    ctx = OpenSSL::SSL::SSLContext.new
    ctx.verify_mode = OpenSSL::SSL::VERIFY_NONE
    ssl = OpenSSL::SSL::SSLSocket.new(Socket.tcp("127.0.0.1", server.port), ctx)
    ssl.sync_close = true
    ssl.connect
    ssl.write("GET /stream?channel=hdr:tls HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    status, headers = raw_head(ssl)
    expect(status).to eq(200)
    expect(headers).to include(expected)
    expect(server.stats[:fallback_total]).to eq(1)
  ensure
    ssl&.close
    server&.stop
  end

  it "are on the Rack response of a server without hijack" do
    Spillway.configure(headers: configured)
    app = Spillway::Middleware.new(->(_env) { [404, {}, []] })
    status, headers, body = app.call(Rack::MockRequest.env_for("/stream?channel=hdr:plain"))
    expect(status).to eq(200)
    expect(headers).to include(expected)
    # Rack 3 wants lower-case names in a response.
    expect(headers.keys.grep(/[A-Z]/)).to eq([])
  ensure
    body&.close
  end
end
