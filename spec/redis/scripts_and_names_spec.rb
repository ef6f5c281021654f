# frozen_string_literal: true

require "spec_helper"

RSpec.describe "Redis: script cache and host names" do
  before(:all) { @redis = RedisServer.new.start }
  after(:all) { @redis&.cleanup }

  it "keeps publishing and resuming after SCRIPT FLUSH (EVALSHA falls back to EVAL)" do
    server = AppServer.new(config: { redis_url: @redis.url }).start
    Spillway.configure(redis_url: @redis.url)
    client = SSEClient.open(server.port, "flush")
    client.wait_for_head
    wait_until { server.stats[:redis_connected] && server.stats[:connections] == 1 }
    first = Spillway.publish("flush", "1")
    client.wait_for_events(1)
    client.close

    @redis.call("SCRIPT", "FLUSH")
    Spillway.publish("flush", "2")                # sync publisher: NOSCRIPT -> EVAL
    Spillway.publish("flush", "3", async: true)   # the hub's command link: NOSCRIPT -> EVAL
    expect(Spillway.flush(timeout: 5)).to be(true)
    @redis.call("SCRIPT", "FLUSH")
    back = SSEClient.open(server.port, "flush", cursor: first) # resume script: NOSCRIPT -> EVAL
    expect(back.wait_for_events(2).map(&:data)).to eq(%w[2 3])
    expect(server.stats[:errors]).to eq(0)
  ensure
    [client, back].compact.each(&:close)
    server&.stop
  end

  it "names idempotency keys NS:k:<key>; the ones Spillway makes up (sync and async) live only as long as a retry can come" do
    Spillway.configure(redis_url: @redis.url, namespace: "keys1", idempotency_ttl: 600)
    id = Spillway.publish("named", "mine", idempotency_key: "order-42-shipped")
    expect(@redis.call("GET", "keys1:k:order-42-shipped")).to eq(id)
    expect(@redis.call("PTTL", "keys1:k:order-42-shipped")).to be_between(590_000, 600_000)
    mine = ["keys1:k:order-42-shipped"]
    Spillway.publish("named", "sync, no key")
    Spillway.publish("named", "async, no key", async: true)
    expect(Spillway.flush(timeout: 5)).to be(true)
    made_up = @redis.call("KEYS", "keys1:k:*") - mine
    expect(made_up.size).to eq(2)
    made_up.each do |k|
      expect(k).to match(/\Akeys1:k:\h{32}\z/)
      expect(@redis.call("PTTL", k)).to be_between(1, 30_000) # SPILLWAY_IDEM_GEN_TTL_MIN_MS at 1 s timeouts
    end
    expect(@redis.call("XLEN", "keys1:s:named")).to eq(3)
  end

  it "resolves a host name off the loop (localhost)" do
    server = AppServer.new(config: { redis_url: "redis://localhost:#{@redis.port}" }).start
    client = SSEClient.open(server.port, "named")
    client.wait_for_head
    wait_until(timeout: 10) { server.stats[:redis_connected] }
    Spillway.configure(redis_url: @redis.url)
    wait_until(timeout: 10) do
      Spillway.publish("named", "hi")
      client.pump
      client.events.any?
    end
    expect(client.data.first).to eq("hi")
  ensure
    client&.close
    server&.stop
  end

  it "reports an unresolvable host in stats and keeps serving streams" do
    server = AppServer.new(config: { redis_url: "redis://no-such-host.invalid:6379", connect_timeout: 0.5 }).start
    client = SSEClient.open(server.port, "nowhere")
    client.wait_for_head
    expect(client.status).to eq(200)
    wait_until(timeout: 10) { server.stats[:last_error].to_s.include?("no-such-host.invalid") }
    expect(server.get("/ping").body).to eq("pong")
  ensure
    client&.close
    server&.stop
  end

  it "closes the streams of a channel an ACL user may not subscribe to, and serves the others" do
    @redis.call("ACL", "SETUSER", "app", "on", ">s3cret", "~*", "resetchannels", "&spillway:ok:*", "&spillway!*", "+@all")
    url = "redis://app:s3cret@127.0.0.1:#{@redis.port}"
    server = AppServer.new(config: { redis_url: url }).start
    good = SSEClient.open(server.port, "ok:1")
    good.wait_for_head
    # Subscribed on its own (Redis refuses a whole SUBSCRIBE batch).
    wait_until { server.stats[:connections] == 1 && server.stats[:joining].zero? }
    bad = SSEClient.open(server.port, "no:1")
    bad.wait_for_head
    bad.wait_closed(timeout: 10)
    wait_until { server.stats[:last_error].to_s.include?("NOPERM") }
    Spillway.configure(redis_url: @redis.url)
    wait_until(message: "the allowed stream live") do
      Spillway.publish("ok:1", "allowed")
      good.pump
      good.events.any?
    end
    expect(good.data.uniq).to eq(["allowed"])
    expect(server.stats[:connections]).to eq(1)
  ensure
    [good, bad].compact.each(&:close)
    server&.stop
    @redis.call("ACL", "DELUSER", "app")
  end

  it "starts a stream with a cursor from the future afresh: a reset, then live messages" do
    server = AppServer.new(config: { redis_url: @redis.url }).start
    Spillway.configure(redis_url: @redis.url)
    Spillway.publish("future", "before")
    client = SSEClient.open(server.port, "future", cursor: "99999999999999-0")
    reset = client.wait_for_events(1).first
    expect(reset.type).to eq("reset")
    expect(reset.last_event_id).not_to eq("99999999999999-0")
    Spillway.publish("future", "live")
    expect(client.wait_for_events(2).last.data).to eq("live")
  ensure
    client&.close
    server&.stop
  end

  it "resets a resume when there is no backlog (backlog_size 0)" do
    server = AppServer.new(config: { redis_url: @redis.url, backlog_size: 0 }).start
    Spillway.configure(redis_url: @redis.url, backlog_size: 0)
    first = Spillway.publish("nobacklog", "1")
    Spillway.publish("nobacklog", "2")
    client = SSEClient.open(server.port, "nobacklog", cursor: first)
    expect(client.wait_for_events(1).first.type).to eq("reset")
    expect(@redis.call("EXISTS", "spillway:s:nobacklog")).to eq(0)
  ensure
    client&.close
    server&.stop
  end
end
