# frozen_string_literal: true

require "spec_helper"

# A Redis that comes back with part of its history: writes it acknowledged
# are gone, older ones are not. A failover to a replica that lagged does
# this, and so does the default RDB persistence (a restart loads the last
# snapshot). Redis alone cannot tell: its id key and streams look whole.
# The processes that were told of the lost messages can: the hub that
# received one live and the publisher that had one acknowledged ask every
# Redis they reconnect to (the witness, scripts.h), and a cursor from before
# the loss then gets a reset instead of a silent hole.
RSpec.describe "Redis: lost acknowledged writes" do
  after do
    @server&.stop
    @redis&.cleanup
  end

  def start(persistence: false)
    # No save points and no AOF: only the snapshots the test takes.
    @redis = RedisServer.new(persistence: persistence).start
    @server = AppServer.new(config: { redis_url: @redis.url }).start
    Spillway.configure(redis_url: @redis.url)
  end

  def open_stream(cursor: nil)
    c = SSEClient.open(@server.port, "d", cursor: cursor)
    c.wait_for_head
    c
  end

  def wait_live(count)
    wait_until { s = @server.stats; s[:connections] == count && s[:joining].zero? && s[:redis_connected] }
  end

  # SIGTERM without save points saves nothing: the restart loads the
  # snapshot (or the AOF, with persistence).
  def restart_redis
    reconnects = @server.stats[:redis_reconnects]
    @redis.restart
    wait_until(timeout: 15, message: "the hub back on Redis") do
      s = @server.stats
      s[:redis_connected] && s[:redis_reconnects] > reconnects
    end
  end

  def reset_of(client)
    wait_until(timeout: 15, message: "a reset on the resumed stream") do
      client.pump
      client.events.find { |e| e.type == "reset" }
    end
  end

  it "resets a resume from before messages the hub received live and Redis then lost" do
    start
    live = open_stream
    wait_live(1)
    seen = Spillway.publish("d", "d-1")
    live.wait_for_events(1)
    @redis.call("SAVE") # the snapshot holds d-1
    Spillway.publish("d", "d-2")
    last = Spillway.publish("d", "d-3")
    live.wait_for_events(3)
    restart_redis
    # The hub's witness ran on its new command link; no publish since, so
    # only the hub knew. What else went (other processes' messages) no one
    # here can name: the history Redis vouches for starts now.
    wait_until(message: "NS:since moved past d-3") { (since = @redis.call("GET", "spillway:since")) && newer?(since, last) }
    back = open_stream(cursor: seen)
    expect(JSON.parse(reset_of(back).data)["channels"]).to eq(["d"])
    expect(back.events.take_while { |e| e.type != "reset" }).to eq([])
    wait_live(2)
    d4 = Spillway.publish("d", "d-4")
    expect(newer?(d4, last)).to be(true) # ids never go back
    [back, live].each { |c| wait_until(message: "d-4") { c.pump; c.data.include?("d-4") } }
    # The live stream had d-1..d-3: told once (the gap repair's), then on.
    expect(messages(live)).to eq(%w[d-1 d-2 d-3 d-4])
    expect(live.events.count { |e| e.type == "reset" }).to be <= 1
    expect(messages(back)).to eq(%w[d-4])
  ensure
    [live, back].each { |c| c&.close }
  end

  def messages(client)
    client.events.reject { |e| e.type == "reset" }.map(&:data)
  end

  def newer?(a, b)
    (a.split("-").map(&:to_i) <=> b.split("-").map(&:to_i)) == 1
  end

  it "resets a resume from before messages only a publisher had acknowledged" do
    start
    seen = Spillway.publish("d", "d-1") # no stream: the hub subscribes to nothing
    @redis.call("SAVE")
    Spillway.publish("d", "d-2")
    d3 = Spillway.publish("d", "d-3")
    @redis.restart # the hub has no stream, and no link to lose
    expect(@redis.call("GET", "spillway:id")).to eq(seen) # the snapshot's
    # The publisher's next connection asks first; its publish then goes on
    # after d-3 (ids never go back).
    after = Spillway.publish("d", "d-4")
    since = @redis.call("GET", "spillway:since")
    expect(newer?(since, d3)).to be(true)
    expect(newer?(after, since)).to be(true)
    back = open_stream(cursor: seen)
    expect(JSON.parse(reset_of(back).data)["channels"]).to eq(["d"])
    back2 = open_stream(cursor: after)
    wait_live(2)
    Spillway.publish("d", "d-5")
    [back, back2].each { |c| wait_until(message: "d-5") { c.pump; c.data.include?("d-5") } }
    expect(back2.events.map(&:type)).not_to include("reset")
    expect(back2.data).to eq(["d-5"])
  ensure
    [back, back2].each { |c| c&.close }
  end

  it "changes nothing when Redis kept everything (AOF, fsync always)" do
    start(persistence: true)
    live = open_stream
    wait_live(1)
    seen = Spillway.publish("d", "d-1")
    live.wait_for_events(1)
    %w[d-2 d-3].each { |m| Spillway.publish("d", m) }
    live.wait_for_events(3)
    since = @redis.call("GET", "spillway:since")
    restart_redis
    Spillway.publish("d", "d-4") # the publisher's witness, too
    back = open_stream(cursor: seen)
    wait_until(message: "d-2..d-4 replayed") { back.pump; back.data.include?("d-4") }
    expect(back.events.map(&:type)).not_to include("reset")
    expect(back.data).to eq(%w[d-2 d-3 d-4])
    expect(@redis.call("GET", "spillway:since")).to eq(since)
  ensure
    [live, back].each { |c| c&.close }
  end
end
