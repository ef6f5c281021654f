# frozen_string_literal: true

require "spec_helper"

# backlog_window: publishing on a channel also trims its backlog by age
# (Redis: XTRIM MINID ~ in the publish script; memory: the channel's ring),
# under the backlog_size ceiling. A resume from before what was trimmed gets
# a reset, one inside the window an exact replay: never a silent hole.
RSpec.describe "backlog_window" do
  # Small stream nodes: Redis trims approximately (~), whole nodes only.
  before(:all) { @redis = RedisServer.new(args: ["--stream-node-max-entries", "2"]).start }
  after(:all) { @redis&.cleanup }

  let(:redis) { @redis }
  let(:window) { 1.5 * Waiting::SLOW }

  def backlog(channel)
    redis.call("XRANGE", "spillway:s:#{channel}", "-", "+").map { |_id, fields| fields.each_slice(2).to_h["f"].split("\n").last.delete_prefix("data: ") }
  end

  # Publishes 1..3, waits until they are older than the window, publishes 4
  # and 5: the ids of all five.
  def publish_across_window(publish)
    old = (1..3).map { |i| publish.call(i.to_s) }
    at = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    wait_until(timeout: window + 5, message: "the window to pass") { Process.clock_gettime(Process::CLOCK_MONOTONIC) > at + window + 0.2 }
    old + [publish.call("4"), publish.call("5")]
  end

  # A fresh server (its hub has cached nothing of the channel): what a
  # stream resuming from cursor gets.
  def resume(server, channel, cursor, count)
    client = SSEClient.open(server.port, channel, cursor: cursor)
    client.wait_for_events(count).map { |e| [e.type, e.type == "reset" ? JSON.parse(e.data)["channels"] : e.data] }
  ensure
    client&.close
  end

  it "trims a channel's Redis stream by age on publish; a resume from before the trim gets a reset, one inside replays exactly" do
    Spillway.configure(redis_url: redis.url, backlog_window: window, backlog_size: 1000)
    ids = publish_across_window(->(data) { Spillway.publish("aged", data) })
    expect(backlog("aged")).to eq(%w[4 5]) # 1..3 went with the publish of 4
    expect(redis.call("XLEN", "spillway:s:other")).to eq(0)

    server = AppServer.new(config: { redis_url: redis.url, backlog_window: window }).start
    # From 3: 4's predecessor is 3, nothing in between is gone.
    expect(resume(server, "aged", ids[2], 2)).to eq([%w[message 4], %w[message 5]])
    expect(resume(server, "aged", ids[3], 1)).to eq([%w[message 5]])
    # From 1 or 2: 3 (or 2 and 3) were trimmed.
    expect(resume(server, "aged", ids[0], 1)).to eq([["reset", ["aged"]]])
    expect(resume(server, "aged", ids[1], 1)).to eq([["reset", ["aged"]]])
  ensure
    server&.stop
  end

  it "keeps the backlog_size ceiling under the window" do
    Spillway.configure(redis_url: redis.url, backlog_window: 3600, backlog_size: 3)
    12.times { |i| Spillway.publish("capped", i.to_s) }
    expect(redis.call("XLEN", "spillway:s:capped")).to be <= 4 # MAXLEN ~ with nodes of 2
  end

  it "trims the memory backend's ring alike" do
    server = AppServer.new(config: { backlog_window: window, backlog_size: 1000 }).start
    ids = publish_across_window(->(data) { server.publish("aged", data) })
    expect(resume(server, "aged", ids[2], 2)).to eq([%w[message 4], %w[message 5]])
    expect(resume(server, "aged", ids[1], 1)).to eq([["reset", ["aged"]]])
    expect(server.stats[:backlog_messages]).to eq(2) if server.stats.key?(:backlog_messages)
  ensure
    server&.stop
  end

  it "refuses a negative or absurd window at configure time, and takes nil or 0 as off" do
    expect { Spillway.configure(backlog_window: -1) }.to raise_error(ArgumentError, /backlog_window must be nil \(off\) or between/)
    expect { Spillway.configure(backlog_window: "soon") }.to raise_error(ArgumentError)
    Spillway.configure(backlog_window: 0)
    expect(Spillway.config.backlog_window).to be_nil
    Spillway.configure(backlog_window: 60)
    expect(Spillway.config.native_options[:backlog_window_ms]).to eq(60_000)
  end
end
