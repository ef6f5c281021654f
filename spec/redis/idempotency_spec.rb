# frozen_string_literal: true

require "spec_helper"
require "timeout"

# Idempotent publishes: a repeat under the same key publishes nothing, and a
# publish whose reply was lost is sent again under its key, so it is neither
# lost, nor doubled, nor reported as failed.
RSpec.describe "Redis: idempotent publish" do
  before(:all) { @redis = RedisServer.new.start }
  after(:all) { @redis&.cleanup }

  let(:redis) { @redis }

  after do
    @proxy&.close
    @clients&.each(&:close)
    @server&.stop
  end

  # A Puma whose hub talks to Redis directly, with a live stream on channel.
  def stream(channel, cursor: nil)
    @server ||= AppServer.new(config: { redis_url: redis.url }).start
    client = SSEClient.open(@server.port, channel, cursor: cursor)
    (@clients ||= []) << client
    client.wait_for_head
    wait_until(message: "stream live") do
      s = @server.stats
      s[:redis_connected] && s[:joining].zero? && redis.call("PUBSUB", "NUMSUB", "spillway:#{channel}")[1] == 1
    end
    client
  end

  # The data of every backlog entry of channel, in order.
  def backlog(channel)
    redis.call("XRANGE", "spillway:s:#{channel}", "-", "+").map { |e| e[1][1][/^data: (.*)$/, 1] }
  end

  # Everything up to a last message has arrived: a duplicate of an earlier
  # one would have come before it.
  def events_through(client, last_data)
    wait_until(message: "#{last_data.inspect} on the stream") do
      client.pump
      client.events.any? { |e| e.data == last_data }
    end
    client.events
  end

  it "publishes once per key: the first id again, one message on a stream, one backlog entry" do
    client = stream("once")
    Spillway.configure(redis_url: redis.url)
    first = Spillway.publish("once", "shipped", idempotency_key: "order-42-shipped")
    again = Spillway.publish("once", "shipped", idempotency_key: "order-42-shipped")
    Spillway.publish("once", "shipped", idempotency_key: "order-42-shipped", async: true)
    expect(Spillway.flush(timeout: 10)).to be(true)
    other = Spillway.publish("once", "other", idempotency_key: "order-43-shipped")
    expect(again).to eq(first)
    expect(other).not_to eq(first)
    events = events_through(client, "other")
    expect(events.map { |e| [e.data, e.last_event_id] }).to eq([["shipped", first], ["other", other]])
    expect(backlog("once")).to eq(%w[shipped other])
    expect(redis.call("GET", "spillway:id")).to eq(other) # the repeats issued no id
    expect(redis.call("GET", "spillway:k:order-42-shipped")).to eq(first)
  end

  it "frees a key after idempotency_ttl" do
    Spillway.configure(redis_url: redis.url, idempotency_ttl: 1)
    first = Spillway.publish("ttl", "1", idempotency_key: "short-lived")
    ttl = redis.call("PTTL", "spillway:k:short-lived")
    expect(ttl).to be_between(1, 1000)
    wait_until(timeout: 5, message: "the key to expire") { redis.call("EXISTS", "spillway:k:short-lived").zero? }
    second = Spillway.publish("ttl", "2", idempotency_key: "short-lived")
    expect(second).not_to eq(first)
    expect(backlog("ttl")).to eq(%w[1 2])
  end

  it "sync: a publish whose connection is killed after the request, before the reply, returns its id; published once" do
    client = stream("killed")
    @proxy = LossyProxy.new(redis.port)
    Spillway.configure(redis_url: @proxy.url, connect_timeout: 1, command_timeout: 1)
    Spillway.publish("killed", "before")
    @proxy.lose_reply_to("data: lost reply\n", mode: :drop)
    id = Spillway.publish("killed", "lost reply") # no key given: the publisher's own
    expect(@proxy.lost).to eq(1)
    Spillway.publish("killed", "after")
    events = events_through(client, "after")
    expect(events.map(&:data)).to eq(["before", "lost reply", "after"])
    expect(events[1].last_event_id).to eq(id)
    expect(backlog("killed")).to eq(["before", "lost reply", "after"])
    expect(Spillway.stats[:publisher][:retried]).to eq(1)
  end

  it "sync: a publish Redis ran but did not answer within command_timeout is sent again, published once" do
    client = stream("slow")
    @proxy = LossyProxy.new(redis.port)
    Spillway.configure(redis_url: @proxy.url, connect_timeout: 1, command_timeout: 0.5)
    @proxy.lose_reply_to("data: held\n", mode: :hold)
    id = Spillway.publish("slow", "held", idempotency_key: "held-1")
    expect(@proxy.lost).to eq(1)
    Spillway.publish("slow", "after")
    events = events_through(client, "after")
    expect(events.map { |e| [e.data, e.last_event_id] }.first).to eq(["held", id])
    expect(backlog("slow")).to eq(%w[held after])
  end

  it "sync: raises once the retry budget is spent, and an interrupt ends a retry at once" do
    @proxy = LossyProxy.new(redis.port)
    Spillway.configure(redis_url: @proxy.url, connect_timeout: 0.3, command_timeout: 0.3)
    Spillway.publish("gone", "warm up")
    @proxy.lose_reply_to("data: 1\n", mode: :drop)
    @proxy.refuse_new # every retry is refused
    t0 = monotonic
    expect { Spillway.publish("gone", "1") }
      .to raise_error(Spillway::RedisError, /retried \d+ times? within \d+ ms: it may have been published/)
    # connect_timeout + 2 x command_timeout, and a margin for a busy machine
    expect(monotonic - t0).to be < 0.9 + 0.5 * Waiting::SLOW
    expect(backlog("gone")).to eq(["warm up", "1"])

    # A long budget now: the interrupt, not the budget, ends the call.
    @proxy.close
    @proxy = LossyProxy.new(redis.port)
    Spillway.configure(redis_url: @proxy.url, connect_timeout: 5, command_timeout: 5)
    Spillway.publish("gone", "warm up")
    @proxy.lose_reply_to("data: 2\n", mode: :drop)
    @proxy.refuse_new
    t0 = monotonic
    expect { Timeout.timeout(0.3) { Spillway.publish("gone", "2") } }.to raise_error(Timeout::Error)
    expect(monotonic - t0).to be < 2 * Waiting::SLOW
    expect(@proxy.lost).to eq(1)

    # And while the publisher waits for a reply Redis holds back.
    @proxy.close
    @proxy = LossyProxy.new(redis.port)
    Spillway.configure(redis_url: @proxy.url, connect_timeout: 5, command_timeout: 5)
    @proxy.lose_reply_to("data: 3\n", mode: :hold)
    t0 = monotonic
    expect { Timeout.timeout(0.3) { Spillway.publish("gone", "3") } }.to raise_error(Timeout::Error)
    expect(monotonic - t0).to be < 2 * Waiting::SLOW
    expect(Spillway.publish("gone", "4")).to match(/\A\d+-\d+\z/) # the publisher works on
    # Interrupted, not undone: Redis ran 2 and 3 before their replies were lost.
    expect(backlog("gone")).to eq(["warm up", "1", "warm up", "2", "3", "4"])
  end

  it "async: publishes across a kill of the command link are sent again after the reconnect, once each, in order" do
    client = stream("async")
    @proxy = LossyProxy.new(redis.port)
    Spillway.configure(redis_url: @proxy.url)
    Spillway.publish("async", "1", async: true)
    expect(Spillway.flush(timeout: 10)).to be(true)
    @proxy.lose_reply_to("data: 2\n", mode: :drop)
    (2..5).each { |i| Spillway.publish("async", i.to_s, async: true) }
    expect(Spillway.flush(timeout: 10)).to be(true)
    expect(@proxy.lost).to eq(1)
    Spillway.publish("async", "6", async: true)
    expect(Spillway.flush(timeout: 10)).to be(true)
    expect(events_through(client, "6").map(&:data)).to eq(%w[1 2 3 4 5 6])
    expect(backlog("async")).to eq(%w[1 2 3 4 5 6])
    stats = Spillway.stats
    expect(stats[:redis_reconnects]).to be >= 1
    expect(stats[:async_failed]).to eq(0)
  end

  it "async: a publish whose link stays down past its key's TTL is reported failed, not sent twice" do
    @proxy = LossyProxy.new(redis.port)
    Spillway.configure(redis_url: @proxy.url, idempotency_ttl: 2, command_timeout: 0.2, connect_timeout: 0.2)
    Spillway.publish("late", "1", async: true)
    expect(Spillway.flush(timeout: 10)).to be(true)
    @proxy.lose_reply_to("data: 2\n", mode: :drop)
    @proxy.refuse_new
    Spillway.publish("late", "2", async: true, idempotency_key: "late-2")
    wait_until(message: "the reply lost") { @proxy.lost == 1 }
    wait_until(timeout: 10, message: "the key to expire") { redis.call("EXISTS", "spillway:k:late-2").zero? }
    @proxy.accept_new
    expect(Spillway.flush(timeout: 10)).to be(false)
    stats = Spillway.stats
    expect(stats[:async_failed]).to eq(1)
    expect(stats[:last_error]).to include("stayed down past its idempotency key's TTL")
    expect(backlog("late")).to eq(%w[1 2])
  end

  it "numbers published through a kill -9 and restart of an AOF Redis (appendfsync always) arrive once each, in order" do
    aof = RedisServer.new(persistence: true).start
    count = 600
    @server = AppServer.new(config: { redis_url: aof.url, heartbeat: 2, connect_timeout: 0.5 }).start
    swarm = SSESwarm.new(Array.new(5) { SSEClient.open(@server.port, "restart") })
    swarm.wait_all(message: "heads") { |c| c.status == 200 }
    wait_until(message: "streams live") do
      s = @server.stats
      s[:connections] == 5 && s[:redis_connected] && s[:joining].zero?
    end
    Spillway.configure(redis_url: aof.url, connect_timeout: 0.5, command_timeout: 0.5)
    published = 0
    # What an app does when a publish raises: the same publish again, under
    # the same key, until Redis is back.
    pub = Thread.new do
      (1..count).each do |i|
        deadline = monotonic + 30
        begin
          Spillway.publish("restart", i.to_s, idempotency_key: "restart-#{i}")
        rescue Spillway::RedisError
          raise if monotonic > deadline

          sleep 0.02
          retry
        end
        published = i
        sleep 0.001 if (i % 10).zero?
      end
    end
    wait_until(timeout: 30, message: "half published") { published >= count / 2 }
    aof.kill
    aof.start
    pub.join
    swarm.wait_all(timeout: 60, message: "all #{count} numbers on every stream") { |c| c.events.size >= count }
    swarm.pump_all
    swarm.clients.each { |c| expect(c.data.map { |d| Integer(d) }).to eq((1..count).to_a) }
    expect(aof.call("XLEN", "spillway:s:restart")).to eq(count)
  ensure
    swarm&.close_all
    aof&.cleanup
  end
end
