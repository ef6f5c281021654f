# frozen_string_literal: true

require "spec_helper"
require "logger"
require "stringio"

# Server-side subscribe (issue 12, item 4) on the Redis backend, across
# processes: a real redis-server, a real Puma, a separate publisher process.
RSpec.describe "Spillway.subscribe, backlog and last_id (Redis backend)" do
  let(:log) { StringIO.new }

  after do
    @server&.stop
    if @publisher_pid
      begin
        Process.kill("KILL", @publisher_pid)
        Process.wait(@publisher_pid)
      rescue Errno::ESRCH, Errno::ECHILD
        nil
      end
    end
    @redis&.cleanup
  end

  def collector
    got = []
    lock = Mutex.new
    [got, lock, ->(m) { lock.synchronize { got << m } }]
  end

  def configure(**extra)
    Spillway.configure(redis_url: @redis.url, logger: Logger.new(log), heartbeat: 1, **extra)
  end

  def publish_seq(server, channel, count, from: 1)
    res = server.post("/publish_seq?channel=#{channel}&count=#{count}&from=#{from}")
    raise "publish_seq: #{res.code} #{res.body}" unless res.code == "200"

    JSON.parse(res.body)
  end

  def subscribed(server, channel)
    JSON.parse(server.get("/subscribed?channel=#{channel}").body)
  end

  it "delivers what another process publishes, in order, with its ids; replays exactly what followed last_id" do
    @redis = RedisServer.new.start
    @server = AppServer.new(config: { redis_url: @redis.url }).start
    configure
    got, lock, push = collector
    Spillway.subscribe("orders", &push)
    wait_until { Spillway.stats[:connections] == 1 && Spillway.stats[:joining].zero? }
    ids = publish_seq(@server, "orders", 100)
    wait_until(message: "100 messages") { lock.synchronize { got.size >= 100 } }
    expect(got.map(&:data)).to eq((1..100).map(&:to_s))
    expect(got.map(&:id)).to eq(ids)
    expect(got.map(&:channel).uniq).to eq(["orders"])

    # From an id in the middle: exactly what followed it, then live.
    again, lock2, push2 = collector
    Spillway.subscribe("orders", last_id: ids[59], &push2)
    wait_until { lock2.synchronize { again.size == 40 } }
    more = publish_seq(@server, "orders", 5, from: 101)
    wait_until { lock2.synchronize { again.size == 45 } }
    expect(again.map(&:id)).to eq(ids[60..] + more)
    expect(again.map(&:data)).to eq((61..105).map(&:to_s))

    expect(Spillway.last_id("orders")).to eq(more.last)
    expect(Spillway.backlog("orders", since: ids[97]).map(&:data)).to eq(%w[99 100] + (101..105).map(&:to_s))
    expect(Spillway.backlog("orders", since: more.last)).to eq([])
    expect(Spillway.last_id("never-published")).to be_nil
  end

  it "subscribes inside the app server: the block runs there, unsubscribe frees the hub's connection" do
    @redis = RedisServer.new.start
    @server = AppServer.new(config: { redis_url: @redis.url }).start
    configure
    expect(@server.post("/subscribe?channel=jobs").code).to eq("200")
    wait_until { s = @server.stats; s[:connections] == 1 && s[:joining].zero? }
    ids = Array.new(20) { |i| Spillway.publish("jobs", "j#{i}", event: "job") }
    wait_until(message: "20 messages in the server") { subscribed(@server, "jobs").size == 20 }
    expect(subscribed(@server, "jobs")).to eq(ids.each_with_index.map { |id, i| [id, "j#{i}", "job"] })

    expect(@server.post("/unsubscribe?channel=jobs").body).to eq("ok")
    wait_until(message: "the connection freed") { @server.stats[:connections].zero? }
    Spillway.publish("jobs", "after")
    # A stream opened after it sees "after": it was published, and the
    # unsubscribed block never got it.
    probe = SSEClient.open(@server.port, "jobs", cursor: ids.last)
    probe.wait_for_events(1)
    expect(subscribed(@server, "jobs").size).to eq(20)
  ensure
    probe&.close
  end

  it "subscribes in a forked Puma worker (preloaded app): the worker's subscription is its own" do
    @redis = RedisServer.new.start
    @server = AppServer.new(config: { redis_url: @redis.url }, workers: 1, preload: true).start
    configure
    expect(@server.post("/subscribe?channel=jobs").code).to eq("200")
    wait_until { s = @server.stats; s[:connections] == 1 && s[:joining].zero? }
    ids = Array.new(10) { |i| Spillway.publish("jobs", "j#{i}") }
    wait_until(message: "10 messages in the worker") { subscribed(@server, "jobs").size == 10 }
    expect(subscribed(@server, "jobs").map(&:first)).to eq(ids)
    expect(@server.post("/unsubscribe?channel=jobs").body).to eq("ok")
    wait_until(message: "the connection freed") { @server.stats[:connections].zero? }
  end

  it "logs a raising block and goes on" do
    @redis = RedisServer.new.start
    configure
    got, lock, push = collector
    Spillway.subscribe("orders") do |m|
      raise KeyError, "no #{m.data}" if m.data.to_i.odd?

      push.call(m)
    end
    wait_until { Spillway.stats[:connections] == 1 && Spillway.stats[:joining].zero? }
    (1..6).each { |i| Spillway.publish("orders", i.to_s) }
    wait_until { lock.synchronize { got.size == 3 } }
    expect(got.map(&:data)).to eq(%w[2 4 6])
    expect(log.string.scan(/the block for orders raised KeyError: no \d/).size).to eq(3)
  end

  it "gets every message once, in order, while another process publishes through pub/sub kills and a Redis restart" do
    @redis = RedisServer.new(persistence: true).start
    configure(connect_timeout: 0.25, command_timeout: 0.5)
    channels = %w[seq:a seq:b]
    got = Hash.new { |h, k| h[k] = [] }
    lock = Mutex.new
    channels.each do |ch|
      Spillway.subscribe(ch) { |m| lock.synchronize { got[ch] << m } }
    end
    wait_until { Spillway.stats[:connections] == 2 && Spillway.stats[:joining].zero? && Spillway.stats[:redis_connected] }
    count = 600
    progress = File.join(@redis.dir, "progress")
    script = File.expand_path("../fixtures/numbered_publisher.rb", __dir__)
    @publisher_pid = Process.spawn(RbConfig.ruby, "-I#{File.expand_path('../../lib', __dir__)}", script, @redis.url,
                                   channels.join(","), count.to_s, "400", progress,
                                   out: File::NULL, err: File.join(@redis.dir, "publisher.log"))
    published = -> { File.exist?(progress) ? File.read(progress).split.first.to_i : 0 }
    repairs = Spillway.stats[:gap_repairs]
    [200, 400].each do |at|
      wait_until(timeout: 20, message: "#{at} published") { published.call >= at }
      @redis.call("CLIENT", "KILL", "TYPE", "pubsub")
    end
    wait_until(timeout: 20, message: "600 published") { published.call >= 600 }
    @redis.restart
    wait_until(timeout: 60, message: "the publisher done") { File.exist?(progress) && File.read(progress).include?("done") }
    wait_until(timeout: 30, message: "every message") { lock.synchronize { channels.all? { |ch| got[ch].size >= count } } }
    channels.each do |ch|
      expect(got[ch].map(&:data)).to eq((1..count).map { |n| "#{ch}:#{n}" })
      ids = got[ch].map { |m| m.id.split("-").map(&:to_i) }
      expect(ids).to eq(ids.sort.uniq)
      expect(got[ch].last.id).to eq(Spillway.last_id(ch))
    end
    expect(Spillway.stats[:gap_repairs] - repairs).to be >= 3
    # Nothing more (no late doubles) arrives.
    Spillway.publish("seq:a", "end")
    wait_until { lock.synchronize { got["seq:a"].size == count + 1 } }
    expect(got["seq:a"].size).to eq(count + 1)
  end

  it "opens its stream again from its last id when the hub restarts, missing nothing published meanwhile" do
    @redis = RedisServer.new.start
    @server = AppServer.new(config: { redis_url: @redis.url }).start
    configure
    got, lock, push = collector
    sub = Spillway.subscribe("orders", &push)
    wait_until { Spillway.stats[:connections] == 1 && Spillway.stats[:joining].zero? }
    first = publish_seq(@server, "orders", 10)
    wait_until { lock.synchronize { got.size == 10 } }
    Spillway.configure(heartbeat: 2) # the hub stops: the stream ends
    second = publish_seq(@server, "orders", 10, from: 11) # while no hub of ours runs
    wait_until(message: "20 messages") { lock.synchronize { got.size >= 20 } }
    expect(got.map(&:id)).to eq(first + second)
    expect(sub.last_id).to eq(second.last)
    expect(Spillway.stats[:connections]).to eq(1)
  end

  it "hands a cursor the backlog no longer reaches to on_reset; Spillway.backlog raises ResetError" do
    @redis = RedisServer.new.start
    configure(backlog_size: 5)
    # XADD MAXLEN ~ trims whole stream nodes (100 entries): 300 messages
    # leave the first ones behind.
    ids = Array.new(300) { |i| Spillway.publish("orders", "m#{i}") }
    resets = Queue.new
    got, lock, push = collector
    Spillway.subscribe("orders", last_id: ids[2], on_reset: ->(r) { resets << r }, &push)
    wait_until { !resets.empty? }
    reset = resets.pop
    expect(reset.channel).to eq("orders")
    after = Spillway.publish("orders", "after")
    wait_until { lock.synchronize { got.size == 1 } }
    expect(got.map(&:id)).to eq([after])
    expect(reset.id).to eq(ids.last) # where it went on from: nothing else was published
    expect { Spillway.backlog("orders", since: ids[2]) }.to raise_error(Spillway::ResetError)
    expect(Spillway.backlog("orders", since: ids[296]).map(&:id)).to eq(ids[297..] + [after])
  end

  it "refuses bad input" do
    @redis = RedisServer.new.start
    configure
    expect { Spillway.subscribe("a b") { nil } }.to raise_error(ArgumentError, /invalid channel name/)
    expect { Spillway.last_id("a\nb") }.to raise_error(ArgumentError, /invalid channel name/)
    expect { Spillway.backlog("orders", since: "x") }.to raise_error(ArgumentError, /invalid since/)
    expect(Spillway.stats[:connections]).to eq(0)
  end
end
