# frozen_string_literal: true

require "spec_helper"

# One Puma process with ONE thread, the memory backend, real sockets.
RSpec.describe "Streams on Puma with one thread (memory backend)" do
  before(:all) do
    @server = AppServer.new(config: { heartbeat: 5 }, threads: "1:1").start
  end

  after(:all) { @server&.stop }

  let(:server) { @server }

  def wait_connections(n)
    wait_until(timeout: 20, message: "stats[:connections] == #{n}") { server.stats[:connections] == n }
  end

  it "holds 1000 streams while an ordinary request still answers at once, delivers every message in order, " \
     "and counts streams down as clients leave" do
    swarm = SSESwarm.new
    1000.times { |i| swarm << SSEClient.open(server.port, ["room:#{i % 10}", "all"]) }
    swarm.wait_all(message: "1000 response heads") { |c| c.status == 200 }
    wait_connections(1000)

    # The one Puma thread is free: a normal request is answered right away.
    t0 = monotonic
    expect(server.get("/ping").body).to eq("pong")
    expect(monotonic - t0).to be < 1.0 * Waiting::SLOW

    ids = Array.new(20) { |i| server.publish("all", "message #{i}", event: "note") }
    server.publish("room:3", "only room 3")
    swarm.wait_all(message: "20 messages on every stream") { |c| c.events.count { |e| e.type == "note" } == 20 }
    swarm.clients.each do |c|
      notes = c.events.select { |e| e.type == "note" }
      expect(notes.map(&:data)).to eq(Array.new(20) { |i| "message #{i}" })
      expect(notes.map(&:last_event_id)).to eq(ids)
    end
    room3 = swarm.clients.each_with_index.select { |_, i| i % 10 == 3 }.map(&:first)
    swarm.wait_all(message: "room 3 message") { |c| !room3.include?(c) || c.data.include?("only room 3") }
    others = swarm.clients - room3
    swarm.pump_all
    expect(others.none? { |c| c.data.include?("only room 3") }).to be(true)

    swarm.clients.first(500).each(&:close)
    wait_connections(500)
    stats = server.stats
    expect(stats[:closed]).to be >= 500
    swarm.close_all
    wait_connections(0)
  end

  it "sends the SSE head, an opening comment and the retry hint" do
    client = SSEClient.open(server.port, "head:check")
    client.wait_for_head
    expect(client.status).to eq(200)
    expect(client.headers).to include(
      "content-type" => "text/event-stream; charset=utf-8",
      "cache-control" => "no-cache, no-transform",
      "x-accel-buffering" => "no",
      "connection" => "close"
    )
    wait_until(message: "retry hint") { client.pump; client.parser.retry_ms }
    expect(client.parser.retry_ms).to eq(2000)
    expect(client.parser.comments).to be >= 1
  ensure
    client&.close
  end

  it "keeps multi-line data intact and names events" do
    client = SSEClient.open(server.port, "lines")
    wait_connections(1)
    server.publish("lines", "one\r\ntwo\rthree\nfour", event: "poem")
    server.publish("lines", "{\"json\":true}")
    events = client.wait_for_events(2)
    expect(events[0].type).to eq("poem")
    expect(events[0].data).to eq("one\ntwo\nthree\nfour")
    expect(events[1].type).to eq("message")
    expect(events[1].data).to eq("{\"json\":true}")
  ensure
    client&.close
  end

  it "resumes with Last-Event-ID: exactly the missed messages, in order, then live ones" do
    client = SSEClient.open(server.port, %w[r:a r:b])
    wait_until { server.stats[:connections] >= 1 }
    first = server.publish("r:a", "a1")
    client.wait_for_events(1)
    client.close
    server.publish("r:b", "b1")
    server.publish("r:a", "a2")
    server.publish("r:other", "not mine")
    server.publish("r:b", "b2")

    resumed = SSEClient.open(server.port, %w[r:a r:b], cursor: first)
    resumed.wait_for_events(3)
    server.publish("r:a", "a3")
    resumed.wait_for_events(4)
    expect(resumed.data).to eq(%w[b1 a2 b2 a3])

    # The cursor may also come in the query (?lastEventId=) for the first connect.
    q = SSEClient.open(server.port, %w[r:a], query: "lastEventId=#{first}")
    q.wait_for_events(2)
    expect(q.data).to eq(%w[a2 a3])
    # Its name and value percent-encoded like any query parameter's.
    e = SSEClient.open(server.port, %w[r:a], query: "last%45ventId=#{first.sub('-', '%2D')}")
    e.wait_for_events(2)
    expect(e.data).to eq(%w[a2 a3])
  ensure
    [client, resumed, q, e].compact.each(&:close)
  end

  it "sends event: reset when the cursor is older than the backlog" do
    client = SSEClient.open(server.port, "old", cursor: "1000-0")
    events = client.wait_for_events(1)
    expect(events[0].type).to eq("reset")
    expect(JSON.parse(events[0].data)).to eq("channels" => ["old"])
    # The reset moves the cursor forward: a reconnect from it is clean.
    again = SSEClient.open(server.port, "old", cursor: events[0].last_event_id)
    server.publish("old", "fresh")
    expect(again.wait_for_events(1).map(&:data)).to eq(["fresh"])
  ensure
    client&.close
    again&.close
  end

  it "answers a garbage Last-Event-ID with a reset rather than an error" do
    client = SSEClient.open(server.port, "garbage", cursor: "not-an-id")
    expect(client.wait_for_events(1).first.type).to eq("reset")
  ensure
    client&.close
  end
end
