# frozen_string_literal: true

require "spec_helper"

# Signed stream tokens (Spillway.sign) against a real Puma. The app's
# authorize only allows public: channels; a token opens exactly its own
# channels without it, and nothing else.
RSpec.describe "Signed stream tokens" do
  STREAM_TOKEN_SECRET = "k" * 48

  before(:all) do
    @server = AppServer.new(config: { secret: STREAM_TOKEN_SECRET }, middleware: { mount: "/events", authorize: "public_only" }).start
  end

  after(:all) { @server&.stop }

  # This process signs with the server's secret (spec_helper resets the
  # settings after every example).
  before { Spillway.configure(secret: STREAM_TOKEN_SECRET) }

  let(:server) { @server }

  after do
    wait_until(message: "no stream left") { server.stats[:connections].zero? }
  end

  def open_with(token, channels = [], query: nil)
    q = +"token=#{token}"
    q << "&#{query}" if query
    SSEClient.open(server.port, channels, mount: "/events", query: q)
  end

  # Publishes on every channel and returns what the stream received.
  def received(client, channels)
    wait_until(message: "stream attached") { server.stats[:connections] == 1 }
    channels.each { |c| server.publish(c, "on #{c}") }
    server.publish(client_first = channels.first, "end")
    wait_until(message: "the last message") { client.pump; client.data.last == "end" }
    client.data - ["end"] if client_first
  end

  it "streams exactly the token's channels, without authorize" do
    client = open_with(Spillway.sign(%w[private:a private:b]))
    client.wait_for_head
    expect(client.status).to eq(200)
    expect(received(client, %w[private:a private:b private:c public:x])).to eq(["on private:a", "on private:b"])
  ensure
    client&.close
  end

  it "lets channel= beside a token narrow it, never widen it" do
    token = Spillway.sign(%w[private:a private:b])
    narrow = open_with(token, %w[private:b])
    narrow.wait_for_head
    expect(received(narrow, %w[private:b private:a])).to eq(["on private:b"])
    narrow.close
    wait_until { server.stats[:connections].zero? }

    %w[private:c public:x].each do |extra|
      res = server.get("/events?token=#{token}&channel=private:a&channel=#{extra}")
      expect(res.code).to eq("403"), extra
      expect(res.body).to include("not in the stream token")
    end
  ensure
    narrow&.close
  end

  it "answers 403 to a forged, truncated, expired or foreign token, and 400 to two, reaching no hub" do
    token = Spillway.sign(%w[private:a])
    expired = Spillway::Token.sign(%w[private:a], expires_in: 60, secret: STREAM_TOKEN_SECRET, config: Spillway.config,
                                                  now: Time.now.to_i - 120)
    foreign = Spillway::Token.sign(%w[private:a], expires_in: 60, secret: "x" * 48, config: Spillway.config)
    v, payload, mac = token.split(".")
    admin = Spillway.sign(%w[private:admin]).split(".")[1]
    before = server.stats
    {
      "#{v}.#{payload}.#{mac.tr('A-Za-z', 'B-ZAb-za')}" => /bad signature/,
      token[0..-2] => /bad signature/,
      token[0, 20] => /not a stream token|bad signature/,
      "#{v}.#{admin}.#{mac}" => /bad signature/,
      expired => /expired/,
      foreign => /bad signature/,
      "" => /not a stream token/
    }.each do |bad, why|
      res = server.get("/events?token=#{bad}")
      expect(res.code).to eq("403"), bad
      expect(res.body).to match(why)
    end
    res = server.get("/events?token=#{token}&token=#{token}")
    expect(res.code).to eq("400")
    # No stream was opened: the hub wrote nothing (an attach writes a head).
    after = server.stats
    expect(after[:connections]).to eq(0)
    expect(after[:bytes_out]).to eq(before[:bytes_out])
  end

  it "still takes a query lastEventId and Last-Event-ID with a token" do
    token = Spillway.sign(%w[private:r])
    first = server.publish("private:r", "r1")
    server.publish("private:r", "r2")
    client = open_with(token, query: "lastEventId=#{first}")
    client.wait_for_events(1)
    expect(client.data).to eq(%w[r2])
  ensure
    client&.close
  end
end
