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
end
