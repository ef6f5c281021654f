# frozen_string_literal: true

require "spec_helper"

# What authorize may return, against a real Puma: the fixture's "by_query"
# authorize returns what the request's `returns` parameter names.
RSpec.describe "The authorize contract" do
  before(:all) do
    @server = AppServer.new(middleware: { mount: "/events", authorize: "by_query", on_error: "by_query" }).start
  end

  after(:all) { @server&.stop }

  let(:server) { @server }

  def open_stream(returns, channels = %w[public:news private:admin], query: nil)
    SSEClient.open(server.port, channels, mount: "/events", query: ["returns=#{returns}", query].compact.join("&"))
  end

  def log_lines(pattern)
    File.read(server.log).lines.grep(pattern)
  end

  # Publishes on every channel and returns what the stream received.
  def received(client, channels)
    wait_until(message: "stream attached") { server.stats[:connections] == 1 }
    channels.each { |c| server.publish(c, "on #{c}") }
    server.publish(channels.first, "end")
    client.wait_for_events(1)
    wait_until(message: "the last message") { client.pump; client.data.last == "end" }
    client.data - ["end"]
  end

  after do
    wait_until(message: "no stream left") { server.stats[:connections].zero? }
  end

  it "grants only the members of a returned Set" do
    client = open_stream("set")
    client.wait_for_head
    expect(client.status).to eq(200)
    expect(received(client, %w[public:news private:admin])).to eq(["on public:news"])
  ensure
    client&.close
  end

  it "answers 403 to an empty Set" do
    client = open_stream("empty_set")
    client.wait_for_head
    expect(client.status).to eq(403)
    expect(server.stats[:connections]).to eq(0)
  ensure
    client&.close
  end

  it "grants every requested channel for true, none for false" do
    client = open_stream("true")
    client.wait_for_head
    expect(client.status).to eq(200)
    expect(received(client, %w[public:news private:admin])).to eq(["on public:news", "on private:admin"])
    client.close
    wait_until { server.stats[:connections].zero? }
    client = open_stream("false")
    client.wait_for_head
    expect(client.status).to eq(403)
  ensure
    client&.close
  end

  it "takes Symbols as channel names" do
    client = open_stream("symbols", %w[private:admin public:a public:b])
    client.wait_for_head
    expect(client.status).to eq(200)
    expect(received(client, %w[public:a private:admin public:b])).to eq(["on public:a", "on public:b"])
  ensure
    client&.close
  end

  { "integer" => "Integer", "string" => "String", "hash" => "Hash" }.each do |returns, klass|
    it "answers 500 to a returned #{klass}, logs one line naming it and opens no stream" do
      before = log_lines(/authorize for \/events returned #{klass};/).size
      client = open_stream(returns)
      client.wait_for_head
      expect(client.status).to eq(500)
      expect(client.headers["content-type"]).to start_with("text/plain")
      client.wait_closed unless client.headers["content-length"]
      expect(log_lines(/authorize for \/events returned #{klass};/).size).to eq(before + 1)
      expect(server.stats).to include(connections: 0, fallback_total: 0)
      # Nothing published reaches the client that asked.
      server.publish("private:admin", "leak")
      client.pump
      expect(client.raw).not_to include("leak")
    ensure
      client&.close
    end
  end

  it "hands an exception in authorize to on_error, whose answer is sent; 500 when it has none or raises" do
    res = server.get("/events?channel=public:a&returns=raise&on_error=answer")
    expect(res.code).to eq("418")
    expect(res.body).to eq("on_error saw ArgumentError: authorize blew up")
    res = server.get("/events?channel=public:a&returns=raise&on_error=raise")
    expect(res.code).to eq("500")
    wait_until(message: "on_error's own failure in the log") { log_lines(/on_error for \/events raised/).any? }
    expect(server.stats[:connections]).to eq(0)
  end

  it "answers 500 when authorize raises, opens no stream and keeps serving" do
    client = open_stream("raise")
    client.wait_for_head
    expect(client.status).to eq(500)
    expect(server.stats[:connections]).to eq(0)
    wait_until(message: "the error in the log") { log_lines(/authorize blew up/).any? }
    client.close
    ok = open_stream("true", %w[public:after])
    ok.wait_for_head
    expect(received(ok, %w[public:after])).to eq(["on public:after"])
  ensure
    client&.close
    ok&.close
  end
end
