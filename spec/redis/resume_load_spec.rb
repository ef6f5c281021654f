# frozen_string_literal: true

require "spec_helper"

# Resumes under load: a deploy's reconnect storm, and clients that ask for
# a big replay and never read it. One backlog read serves every stream
# that resumes a channel from the same place; replays are shared frames.
RSpec.describe "Redis: resumes under load" do
  after do
    @server&.stop
    @redis&.cleanup
  end

  def command_calls(redis)
    redis.call("INFO", "commandstats").scan(/^cmdstat_(\w+):calls=(\d+)/).to_h { |k, v| [k, Integer(v)] }
  end

  def rss_kib(pid)
    Integer(File.read("/proc/#{pid}/status")[/^VmRSS:\s+(\d+)/, 1])
  end

  def start(**config)
    @redis = RedisServer.new.start
    @server = AppServer.new(config: { redis_url: @redis.url, **config }).start
    Spillway.configure(redis_url: @redis.url, **config)
  end

  it "serves a reconnect storm on one channel with a handful of Redis commands" do
    start
    Spillway.publish("storm", "before")
    cursor = Spillway.cursor
    missed = Array.new(20) { |i| Spillway.publish("storm", "m#{i}") }
    # A stream that keeps the channel subscribed, as a live page would.
    watcher = SSEClient.open(@server.port, "storm")
    watcher.wait_for_head
    wait_until { s = @server.stats; s[:connections] == 1 && s[:joining].zero? }
    before = command_calls(@redis)
    swarm = SSESwarm.new(Array.new(300) { SSEClient.open(@server.port, "storm", cursor: cursor) })
    swarm.wait_all(timeout: 30, message: "every stream has the 20 missed messages") { |c| c.events.size >= 20 }
    after = command_calls(@redis)
    swarm.clients.each do |c|
      expect(c.data).to eq(Array.new(20) { |i| "m#{i}" })
      expect(c.events.last.last_event_id).to eq(missed.last)
    end
    spent = after.sum { |k, v| v - before.fetch(k, 0) } - 1 # the INFO itself
    expect(spent).to be <= 10
    Spillway.publish("storm", "live")
    swarm.wait_all(message: "the live message after the replay") { |c| c.data.last == "live" }
  ensure
    swarm&.close_all
    watcher&.close
  end

  it "serves a resume from before what the resume cache's ring still holds, with one fill" do
    # The server keeps 100 frames per channel in its ring; the publishes
    # (this process) keep 10,000 in Redis, so Redis still has what the ring
    # trimmed.
    @redis = RedisServer.new.start
    @server = AppServer.new(config: { redis_url: @redis.url, backlog_size: 100 }).start
    Spillway.configure(redis_url: @redis.url, backlog_size: 10_000)
    watcher = SSEClient.open(@server.port, "trim")
    watcher.wait_for_head
    wait_until { s = @server.stats; s[:connections] == 1 && s[:joining].zero? }
    ids = [Spillway.publish("trim", "m0")]
    # A resume starts the channel's cache (from where the hub stands now).
    first = SSEClient.open(@server.port, "trim", cursor: ids[0])
    first.wait_for_head
    wait_until { @server.stats[:joining].zero? && @server.stats[:resumes] >= 1 }
    150.times { |i| ids << Spillway.publish("trim", "m#{i + 1}") }
    watcher.wait_for_events(151)
    before = command_calls(@redis)
    # From m10: 140 messages, more than the ring's 100.
    late = SSEClient.open(@server.port, "trim", cursor: ids[10])
    late.wait_for_events(140, timeout: 10)
    expect(late.data).to eq(Array.new(140) { |i| "m#{i + 11}" })
    expect(late.events.map(&:last_event_id)).to eq(ids[11..])
    spent = command_calls(@redis).sum { |k, v| v - before.fetch(k, 0) } - 1
    expect(spent).to be <= 5 # one fill (one or two pages), not a loop of them
    Spillway.publish("trim", "live")
    late.wait_for_events(141)
    expect(late.data.last).to eq("live")
  ensure
    [watcher, first, late].each { |c| c&.close }
  end

  it "keeps memory bounded and other streams served when clients ask for big replays and never read" do
    start(command_timeout: 1.0)
    cursor = Spillway.cursor
    body = "x" * 4000
    channels = Array.new(8) { |i| "big#{i}" }
    1000.times { |n| channels.each { |ch| Spillway.publish(ch, "#{n} #{body}", async: true) } }
    expect(Spillway.flush(timeout: 60)).to be(true)
    rss0 = rss_kib(@server.pid)
    reads0 = command_calls(@redis).fetch("evalsha", 0)
    # Ten clients that send the request and never read a byte of it.
    stuck = Array.new(10) { SSEClient.open(@server.port, channels, cursor: cursor, rcvbuf: 4096) }
    wait_until(timeout: 30, message: "the stuck streams joined") do
      s = @server.stats
      s[:connections] == 10 && s[:joining].zero?
    end
    # A new stream on another channel is served at once meanwhile.
    t0 = monotonic
    fresh = SSEClient.open(@server.port, "elsewhere")
    fresh.wait_for_head
    wait_until(message: "the fresh stream live") { @server.stats[:joining].zero? && @server.stats[:connections] == 11 }
    Spillway.publish("elsewhere", "hello")
    fresh.wait_for_events(1, timeout: 5)
    expect(monotonic - t0).to be < 2.0 * Waiting::SLOW
    grown_mib = (rss_kib(@server.pid) - rss0) / 1024.0
    expect(grown_mib).to be < 100
    stats = @server.stats
    expect(stats[:last_error].to_s).not_to include("did not answer in time")
    expect(stats[:redis_reconnects]).to eq(0)
    # The 8 backlogs were read once, in pages, not once per client.
    reads = command_calls(@redis).fetch("evalsha", 0) - reads0
    expect(reads).to be <= 8 * 3 + 2
  ensure
    stuck&.each(&:close)
    fresh&.close
  end

  it "serves a stream whose channels are filled one after the other, even when Redis keeps more than backlog_size" do
    # MAXLEN ~ 5 trims whole radix-tree nodes: Redis keeps all 30 entries of
    # each channel, so each fill brings more than backlog_size frames. A fill
    # that trimmed its ring back to backlog_size at once would leave the
    # stream waiting for the other channel without its frames, ask again,
    # and so on.
    start(backlog_size: 5)
    watcher = SSEClient.open(@server.port, %w[p q])
    watcher.wait_for_head
    wait_until { s = @server.stats; s[:connections] == 1 && s[:joining].zero? }
    cursor = Spillway.publish("p", "before")
    30.times { |i| %w[p q].each { |ch| Spillway.publish(ch, "#{ch}#{i}") } }
    watcher.wait_for_events(61)
    reads0 = command_calls(@redis).fetch("evalsha", 0)
    back = SSEClient.open(@server.port, %w[p q], cursor: cursor)
    back.wait_for_events(60, timeout: 10)
    expect(back.data).to eq(Array.new(30) { |i| ["p#{i}", "q#{i}"] }.flatten)
    expect(back.events.map(&:type).uniq).to eq(["message"])
    expect(command_calls(@redis).fetch("evalsha", 0) - reads0).to be <= 4
  ensure
    [watcher, back].compact.each(&:close)
  end
end
