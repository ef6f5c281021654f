# frozen_string_literal: true

require "spec_helper"

# transport=long-poll and transport=poll against a real Puma: one answer,
# held in the native loop (no Puma thread), with Content-Length and the same
# frames and ids a stream gets, then closed.
RSpec.shared_examples "long-poll and poll" do
  let(:server) { @server }

  def answer(channels, query:, cursor: nil, timeout: 10)
    c = SSEClient.open(server.port, channels, cursor: cursor, query: query)
    c.wait_closed(timeout: timeout)
    c
  end

  # The body after the head, as sent.
  def body_of(client)
    client.raw.byteslice(client.raw.index("\r\n\r\n") + 4..)
  end

  def expect_complete(client)
    expect(client.status).to eq(200)
    expect(client.headers).to include("content-type" => "text/event-stream; charset=utf-8", "connection" => "close")
    expect(client.headers).not_to include("transfer-encoding")
    expect(Integer(client.headers.fetch("content-length"))).to eq(body_of(client).bytesize)
  end

  it "holds a long-poll in the native loop until a message comes, then answers it completely and closes" do
    before = server.stats
    lp = SSEClient.open(server.port, %w[lp:a lp:b], query: "transport=long-poll")
    wait_until(timeout: 10, message: "the long-poll held") { server.stats[:long_polls] == before[:long_polls] + 1 }
    # Held: no byte yet (no head, no opening comment, no heartbeat), and the
    # one Puma thread is free.
    expect(server.get("/ping").body).to eq("pong")
    lp.pump
    expect(lp.raw).to eq("")
    expect(server.stats[:connections]).to eq(before[:connections] + 1)

    id = server.publish("lp:b", "first", event: "note")
    lp.wait_closed
    expect_complete(lp)
    expect(lp.events.map { |e| [e.type, e.data, e.last_event_id] }).to eq([["note", "first", id]])
    expect(lp.parser.comments).to eq(0)
    wait_until(timeout: 10, message: "the long-poll released") do
      s = server.stats
      s[:long_polls] == before[:long_polls] && s[:connections] == before[:connections] &&
        s[:polls_answered] == before[:polls_answered] + 1
    end
  end

  it "answers a poll at once with what its cursor missed, with the ids a stream replays" do
    ids = Array.new(5) { |i| server.publish("lp:replay", "m#{i}") }
    stream = SSEClient.open(server.port, "lp:replay", cursor: ids[1])
    stream.wait_for_events(3)
    poll = answer("lp:replay", query: "transport=poll", cursor: ids[1])
    expect_complete(poll)
    expect(poll.events.map(&:data)).to eq(%w[m2 m3 m4])
    expect(poll.events.map(&:last_event_id)).to eq(stream.events.first(3).map(&:last_event_id))
    expect(poll.events.map(&:last_event_id)).to eq(ids[2..])
    # lastEventId in the query works as for a stream; nothing new: empty.
    empty = answer("lp:replay", query: "transport=poll&lastEventId=#{ids.last}")
    expect_complete(empty)
    expect(empty.headers["content-length"]).to eq("0")
    # A long-poll whose cursor already missed something is answered at once.
    lp = answer("lp:replay", query: "transport=long-poll", cursor: ids[3])
    expect(lp.events.map(&:data)).to eq(%w[m4])
  ensure
    stream&.close
  end

  it "answers a long-poll with nothing to say empty after long_poll_timeout, and a poll without a cursor empty" do
    t0 = monotonic
    lp = answer("lp:quiet", query: "transport=long-poll", timeout: 10)
    waited = monotonic - t0
    expect_complete(lp)
    expect(lp.headers["content-length"]).to eq("0")
    expect(waited).to be >= 0.9
    poll = answer("lp:quiet", query: "transport=poll")
    expect_complete(poll)
    expect(poll.headers["content-length"]).to eq("0")
  end

  it "gives a long-poll from an unknown cursor an honest reset, and the next one resumes from the reset's id" do
    lp = answer("lp:reset", query: "transport=long-poll", cursor: "1-0")
    expect_complete(lp)
    expect(lp.events.map(&:type)).to eq(["reset"])
    expect(JSON.parse(lp.events.first.data)).to eq("channels" => ["lp:reset"])
    later = SSEClient.open(server.port, "lp:reset", cursor: lp.events.first.last_event_id, query: "transport=long-poll")
    wait_until(timeout: 10, message: "held") { server.stats[:long_polls] >= 1 }
    id = server.publish("lp:reset", "after")
    later.wait_closed
    expect(later.events.map { |e| [e.data, e.last_event_id] }).to eq([["after", id]])
  end

  it "refuses an unknown transport with a 400 naming the allowed ones, before any hub work" do
    res = server.get("/stream?channel=lp:x&transport=websocket")
    expect(res.code).to eq("400")
    expect(res.body).to include('unknown transport "websocket"').and include("stream, long-poll, poll")
  end

  it "delivers one message to many held long-polls, each answered once" do
    polls = Array.new(50) { SSEClient.open(server.port, "lp:many", query: "transport=long-poll") }
    wait_until(timeout: 10, message: "50 held") { server.stats[:long_polls] == 50 }
    id = server.publish("lp:many", "all of you")
    polls.each(&:wait_closed)
    polls.each do |p|
      expect_complete(p)
      expect(p.events.map { |e| [e.data, e.last_event_id] }).to eq([["all of you", id]])
    end
    wait_until(timeout: 10, message: "none held") { server.stats[:long_polls].zero? }
  ensure
    polls&.each(&:close)
  end
end

RSpec.describe "Long-poll and poll (memory backend)" do
  before(:all) do
    @server = AppServer.new(config: { long_poll_timeout: 1, headers: { "X-Test" => "lp" } }).start
  end

  after(:all) { @server&.stop }

  include_examples "long-poll and poll"

  it "sends the configured headers with the answer" do
    lp = answer("lp:h", query: "transport=poll")
    expect(lp.headers["x-test"]).to eq("lp")
  end
end

RSpec.describe "Long-poll and poll (Redis backend)" do
  before(:all) do
    @redis = RedisServer.new.start
    @server = AppServer.new(config: { redis_url: @redis.url, long_poll_timeout: 1 }).start
  end

  after(:all) do
    @server&.stop
    @redis&.cleanup
  end

  include_examples "long-poll and poll"

  it "answers a long-poll whose cursor is the newest id with the next message, published by another process" do
    id1 = server.publish("lp:redis", "one")
    lp = SSEClient.open(server.port, "lp:redis", cursor: id1, query: "transport=long-poll")
    wait_until(timeout: 10, message: "held") { server.stats[:long_polls] == 1 }
    id2 = server.publish("lp:redis", "two")
    lp.wait_closed
    expect(lp.events.map { |e| [e.data, e.last_event_id] }).to eq([["two", id2]])
  end
end

RSpec.describe "Long-polls and max_connections" do
  before(:all) { @server = AppServer.new(config: { max_connections: 2, long_poll_timeout: 30 }).start }
  after(:all) { @server&.stop }

  it "counts held long-polls as connections: past the limit a 503, and a place again once one is answered" do
    server = @server
    polls = Array.new(2) { SSEClient.open(server.port, "lp:cap", query: "transport=long-poll") }
    wait_until(timeout: 10, message: "2 held") { server.stats[:long_polls] == 2 }
    expect(server.get("/stream?channel=lp:cap&transport=long-poll").code).to eq("503")
    server.publish("lp:cap", "go")
    polls.each(&:wait_closed)
    wait_until(timeout: 10, message: "released") { server.stats[:connections].zero? }
    again = SSEClient.open(server.port, "lp:cap", query: "transport=poll")
    again.wait_closed
    expect(again.status).to eq(200)
  ensure
    polls&.each(&:close)
  end
end
