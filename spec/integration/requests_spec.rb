# frozen_string_literal: true

require "spec_helper"

# Everything a stream request can get wrong is answered before the hijack,
# with a short text body, and never reaches the hub.
RSpec.describe "Bad requests, limits and authorization" do
  before(:all) do
    @server = AppServer.new(
      config: { max_connections: 3, max_channels_per_connection: 4, max_channel_length: 16, max_message_bytes: 1000 },
      middleware: { mount: "/events", authorize: "public_only" }
    ).start
  end

  after(:all) { @server&.stop }

  let(:server) { @server }

  def get(path, headers = {})
    server.get(path, headers)
  end

  it "rejects a request without a channel" do
    res = get("/events")
    expect(res.code).to eq("400")
    expect(res.body).to include("no channel given")
    expect(res["content-type"]).to start_with("text/plain")
  end

  it "rejects bad channel names" do
    ["bad%20name", "semi%3Bcolon", "x" * 17, "%E2%9C%93"].each do |name|
      res = get("/events?channel=public:#{name}")
      expect(res.code).to eq("400"), name
      expect(res.body).to include("invalid channel name")
    end
    expect(get("/events?channel=").code).to eq("400")
  end

  it "rejects too many channels, naming the limit" do
    res = get("/events?" + (1..5).map { |i| "channel=public:#{i}" }.join("&"))
    expect(res.code).to eq("400")
    expect(res.body).to include("max_channels_per_connection is 4")
  end

  it "answers other methods with 405" do
    res = server.post("/events?channel=public:x")
    expect(res.code).to eq("405")
    expect(res["allow"]).to eq("GET")
  end

  it "rejects malformed escapes and an oversized Last-Event-ID" do
    expect(get("/events?channel=public:%ZZ").code).to eq("400")
    expect(get("/events?channel=public:%E2%9C").code).to eq("400")
    expect(get("/events?channel=public:a", "Last-Event-ID" => "9" * 65).code).to eq("400")
  end

  it "leaves other paths to the app" do
    expect(get("/ping").body).to eq("pong")
    expect(get("/events/more?channel=public:a").code).to eq("404")
  end

  it "returns 403 when authorize allows none of the channels" do
    res = get("/events?channel=private:x")
    expect(res.code).to eq("403")
  end

  it "keeps only the channels authorize returns" do
    client = SSEClient.open(server.port, %w[public:ok private:secret], mount: "/events")
    client.wait_for_head
    wait_until { server.stats[:connections] == 1 }
    server.publish("private:secret", "leak")
    server.publish("public:ok", "fine")
    expect(client.wait_for_events(1).map(&:data)).to eq(["fine"])
    client.pump
    expect(client.data).not_to include("leak")
  ensure
    client&.close
    wait_until { server.stats[:connections].zero? }
  end

  it "answers 503 with Retry-After past max_connections, and takes streams again once one leaves" do
    clients = Array.new(3) { SSEClient.open(server.port, "public:full", mount: "/events") }
    clients.each(&:wait_for_head)
    res = get("/events?channel=public:full")
    expect(res.code).to eq("503")
    expect(res["retry-after"]).to eq("2")
    expect(res.body).to include("max_connections 3")
    clients.pop.close
    wait_until { server.stats[:connections] == 2 }
    extra = SSEClient.open(server.port, "public:full", mount: "/events")
    extra.wait_for_head
    expect(extra.status).to eq(200)
  ensure
    clients&.each(&:close)
    extra&.close
    wait_until { server.stats[:connections].zero? }
  end

  it "refuses oversized messages and bad events at publish, naming the limit, and keeps serving" do
    res = server.post("/publish?channel=public:a", "x" * 1001)
    expect(res.code).to eq("422")
    expect(res.body).to include("max_message_bytes (1000)")
    res = server.post("/publish?channel=public:a&event=#{URI.encode_www_form_component("a\nb")}", "x")
    expect(res.body).to include("invalid event name")
    res = server.post("/publish?channel=bad%20name", "x")
    expect(res.body).to include("invalid channel name")
    res = server.post("/publish?channel=public:a", "\xff\xfe".b)
    expect(res.body).to include("not valid UTF-8")
    expect(server.publish("public:a", "x" * 1000)).to match(/\A\d+-\d+\z/)
  end
end
