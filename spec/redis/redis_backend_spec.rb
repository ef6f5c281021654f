# frozen_string_literal: true

require "spec_helper"

# The Redis backend against a real redis-server and real Pumas.
RSpec.describe "Redis backend" do
  before(:all) { @redis = RedisServer.new.start }
  after(:all) { @redis&.cleanup }

  let(:redis) { @redis }

  def app(**config)
    AppServer.new(config: { redis_url: redis.url, heartbeat: 2 }.merge(config)).start
  end

  def numbers(client)
    client.data.map { |d| Integer(d) }
  end

  it "carries a message published by a third process to the streams of two Puma processes" do
    a = app
    b = app
    ca = SSEClient.open(a.port, "shared")
    cb = SSEClient.open(b.port, "shared")
    [ca, cb].each(&:wait_for_head)
    wait_until { a.stats[:redis_connected] && b.stats[:redis_connected] }

    Spillway.configure(redis_url: redis.url)
    id = Spillway.publish("shared", "hello both", event: "greeting")
    [ca, cb].each do |c|
      ev = c.wait_for_events(1).first
      expect([ev.type, ev.data, ev.last_event_id]).to eq(["greeting", "hello both", id])
    end
    expect(redis.call("XLEN", "spillway:s:shared")).to eq(1)
    expect(Spillway.stats[:running]).to be(false) # publishing alone starts no thread
  ensure
    [ca, cb].compact.each(&:close)
    [a, b].compact.each(&:stop)
  end

  it "resumes exactly the missed messages, and sends a reset past the backlog" do
    server = app(backlog_size: 5)
    client = SSEClient.open(server.port, "resume")
    client.wait_for_head
    wait_until { server.stats[:redis_connected] }
    first = server.publish("resume", "1")
    client.wait_for_events(1)
    client.close
    ids = (2..4).map { |i| server.publish("resume", i.to_s) }

    back = SSEClient.open(server.port, "resume", cursor: first)
    back.wait_for_events(3)
    server.publish("resume", "5")
    back.wait_for_events(4)
    expect(numbers(back)).to eq([2, 3, 4, 5])
    expect(back.events[2].last_event_id).to eq(ids.last)

    # Far behind: the 5-entry backlog no longer reaches the cursor. (Redis
    # trims approximately, in nodes of 100 entries: publish well past it.)
    200.times { |i| server.publish("resume", (6 + i).to_s) }
    late = SSEClient.open(server.port, "resume", cursor: first)
    reset = late.wait_for_events(1).first
    expect(reset.type).to eq("reset")
    expect(JSON.parse(reset.data)).to eq("channels" => ["resume"])
    server.publish("resume", "after-reset")
    expect(late.wait_for_events(2).last.data).to eq("after-reset")
  ensure
    [client, back, late].compact.each(&:close)
    server&.stop
  end

  it "gives a cursor for \"from now on\", before the first publish too" do
    fresh = RedisServer.new.start
    Spillway.configure(redis_url: fresh.url)
    server = AppServer.new(config: { redis_url: fresh.url }).start
    cursor = Spillway.cursor # nothing published yet in this namespace
    expect(cursor).to match(/\A\d+-0\z/)
    Spillway.publish("fresh", "after the cursor")
    client = SSEClient.open(server.port, "fresh", query: "lastEventId=#{cursor}")
    expect(client.wait_for_events(1).map { |e| [e.type, e.data] }).to eq([["message", "after the cursor"]])
    expect(Spillway.cursor).to eq(client.events.last.last_event_id)
  ensure
    client&.close
    server&.stop
    fresh&.cleanup
  end

  it "resumes ten channels on one connection, in id order across channels" do
    server = app
    channels = (0...10).map { |i| "multi:#{i}" }
    client = SSEClient.open(server.port, channels)
    client.wait_for_head
    wait_until { server.stats[:redis_connected] && server.stats[:connections] == 1 }
    cursor = server.publish("multi:0", "start")
    client.wait_for_events(1)
    client.close
    Spillway.configure(redis_url: redis.url)
    sent = Array.new(50) { |i| ["multi:#{(i * 7) % 10}", "m#{i}"] }
    sent.each { |ch, data| Spillway.publish(ch, data) }
    Spillway.publish("multi:other", "not subscribed")

    back = SSEClient.open(server.port, channels, cursor: cursor)
    back.wait_for_events(50)
    expect(back.data).to eq(sent.map(&:last))
    ids = back.events.map(&:last_event_id)
    expect(ids).to eq(ids.sort_by { |id| id.split("-").map(&:to_i) })
  ensure
    [client, back].compact.each(&:close)
    server&.stop
  end

  it "starts streams while Redis is down at boot and delivers once it is up" do
    down = RedisServer.new
    server = AppServer.new(config: { redis_url: down.url, connect_timeout: 0.2 }).start
    client = SSEClient.open(server.port, "late")
    client.wait_for_head
    expect(client.status).to eq(200)
    stats = server.stats
    expect(stats[:redis_connected]).to be(false)
    expect(stats[:last_error]).to include("Redis")

    down.start
    wait_until(timeout: 10, message: "hub connected to Redis") { server.stats[:redis_connected] }
    Spillway.configure(redis_url: down.url)
    # The stream joins once its subscription is confirmed; publish until
    # the first message gets through, then check nothing is out of order.
    wait_until(timeout: 10, message: "first message through") do
      Spillway.publish("late", "ping")
      client.pump
      client.events.any?
    end
    Spillway.publish("late", "last")
    client.wait_for_events(client.events.size + 1)
    expect(client.data.last).to eq("last")
    expect(client.data[0...-1].uniq).to eq(["ping"])
  ensure
    client&.close
    server&.stop
    down&.cleanup
  end

  it "raises a clear error within the timeout when Redis is unreachable, and queues async publishes up to the bound" do
    down = RedisServer.new # never started: connection refused
    Spillway.configure(redis_url: down.url, connect_timeout: 0.3, command_timeout: 0.3, async_limit: 5)
    t0 = monotonic
    expect { Spillway.publish("x", "y") }.to raise_error(Spillway::RedisError, /cannot connect to Redis at redis:\/\/127\.0\.0\.1:#{down.port}/)
    expect(monotonic - t0).to be < 1.0 * Waiting::SLOW

    5.times { |i| expect(Spillway.publish("queued", "q#{i}", async: true)).to be_nil }
    expect { Spillway.publish("queued", "one too many", async: true) }.to raise_error(Spillway::QueueFull, /async_limit/)
    expect(Spillway.flush(timeout: 0.2)).to be(false)

    down.start
    expect(Spillway.flush(timeout: 10)).to be(true)
    entries = down.call("XRANGE", "spillway:s:queued", "-", "+")
    expect(entries.map { |e| e[1][1][/data: (.*)/, 1] }).to eq(%w[q0 q1 q2 q3 q4])
  ensure
    Spillway.shutdown
    down&.cleanup
  end

  it "wakes a flush that waits for an unreachable Redis when another thread shuts down" do
    down = RedisServer.new # never started
    Spillway.configure(redis_url: down.url, connect_timeout: 0.2)
    Spillway.publish("never", "x", async: true)
    result = nil
    waiter = Thread.new { result = Spillway.flush(timeout: 30) }
    wait_until { waiter.status == "sleep" }
    t0 = monotonic
    Spillway.shutdown
    expect(waiter.join(5)).to be_truthy
    expect(result).to be(false)
    expect(monotonic - t0).to be < 3 * Waiting::SLOW
    expect(Spillway.stats[:running]).to be(false)
  ensure
    down&.cleanup
  end

  it "raises within command_timeout when Redis accepts but does not answer" do
    # A listener that never answers: a Redis that hangs.
    mute = TCPServer.new("127.0.0.1", 0)
    Spillway.configure(redis_url: "redis://127.0.0.1:#{mute.addr[1]}", command_timeout: 0.3, connect_timeout: 0.3)
    t0 = monotonic
    expect { Spillway.publish("x", "y") }.to raise_error(Spillway::RedisError, /did not answer within command_timeout/)
    expect(monotonic - t0).to be < 1.5 * Waiting::SLOW
  ensure
    mute&.close
  end

  it "speaks AUTH with a password and works over a unix socket, in another database" do
    secure = RedisServer.new(password: "s3cret", unixsocket: true).start
    server = AppServer.new(config: { redis_url: secure.unix_url.sub(%r{\z}, "?db=3") }).start
    client = SSEClient.open(server.port, "unix")
    client.wait_for_head
    wait_until(timeout: 10) { server.stats[:redis_connected] }
    Spillway.configure(redis_url: "redis://:s3cret@127.0.0.1:#{secure.port}/3")
    Spillway.publish("unix", "over unix")
    expect(client.wait_for_events(1).first.data).to eq("over unix")
    expect(secure.call("SELECT", "3")).to eq("OK")
    wrong = AppServer.new(config: { redis_url: "redis://:wrong@127.0.0.1:#{secure.port}" }).start
    stranded = SSEClient.open(wrong.port, "unix") # the hub starts with the first stream
    stranded.wait_for_head
    wait_until(timeout: 10) { wrong.stats[:last_error].to_s.match?(/WRONGPASS|invalid password/i) }
    expect(wrong.stats[:redis_connected]).to be(false)
  ensure
    [client, stranded].compact.each(&:close)
    server&.stop
    wrong&.stop
    secure&.cleanup
  end

  it "subscribes when the first stream joins and unsubscribes after the last leaves (batched, lingering)" do
    server = app(unsubscribe_linger: 0.2)
    clients = Array.new(20) { SSEClient.open(server.port, %w[sub:a sub:b]) }
    clients.each(&:wait_for_head)
    wait_until { server.stats[:redis_connected] && server.stats[:connections] == 20 }
    wait_until { (redis.call("PUBSUB", "CHANNELS", "spillway:sub:*") || []).sort == %w[spillway:sub:a spillway:sub:b] }
    expect(redis.call("PUBSUB", "NUMSUB", "spillway:sub:a")).to eq(["spillway:sub:a", 1]) # one link, not one per stream
    clients.each(&:close)
    wait_until(timeout: 5, message: "unsubscribed") { redis.call("PUBSUB", "CHANNELS", "spillway:sub:*").empty? }
    wait_until { server.stats[:channels].zero? }
  ensure
    server&.stop
  end
end
