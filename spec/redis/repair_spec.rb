# frozen_string_literal: true

require "spec_helper"

# Gap repair and resume where Redis cannot serve everything: the reset must
# name exactly the channels with a hole, and nothing of the other channels
# may go missing around it.
RSpec.describe "Redis: honest resets" do
  after do
    @server&.stop
    @proxy&.close
    @redis&.cleanup
  end

  def numbers(client, channel)
    client.events.reject { |e| e.type == "reset" }.map(&:data).grep(/\A#{channel}-/).map { |d| Integer(d.split("-")[1]) }
  end

  it "keeps the live messages of other channels that arrive while a partial reset's repair read is under way" do
    @redis = RedisServer.new.start
    @proxy = FaultProxy.new(@redis.port)
    @server = AppServer.new(config: { redis_url: "redis://127.0.0.1:#{@proxy.port}/0", backlog_size: 5, command_timeout: 5 }).start
    Spillway.configure(redis_url: @redis.url, backlog_size: 5)
    client = SSEClient.open(@server.port, %w[x y])
    client.wait_for_head
    wait_until { s = @server.stats; s[:connections] == 1 && s[:joining].zero? && s[:redis_connected] }
    Spillway.publish("y", "y-0")
    client.wait_for_events(1)

    # The repair's read answers late; the subscriber link is cut, and x gets
    # far more than its backlog keeps before the link is back.
    @proxy.delay_scripted = 1.0 # within command_timeout: the read is not sent again
    repairs = @server.stats[:gap_repairs]
    expect(@redis.call("CLIENT", "KILL", "TYPE", "pubsub")).to eq(1)
    reads = @proxy.requests_with("spillway:s:y")
    300.times { |i| Spillway.publish("x", "x-#{i + 1}") }
    wait_until(message: "the repair read sent") { @proxy.requests_with("spillway:s:y") > reads }
    # Published while the repair read is in flight: live, held, and not part
    # of the hole on x.
    (1..10).each { |i| Spillway.publish("y", "y-#{i}") }
    wait_until(timeout: 15, message: "the repair") { @server.stats[:gap_repairs] > repairs }
    @proxy.delay_scripted = 0
    Spillway.publish("y", "y-11")
    wait_until(message: "y-11") { client.pump; client.data.include?("y-11") }
    expect(numbers(client, "y")).to eq((0..11).to_a)
    resets = client.events.select { |e| e.type == "reset" }
    expect(resets.map { |e| JSON.parse(e.data)["channels"] }).to eq([["x"]])
    # Whatever of x follows the reset is in order and not doubled.
    xs = numbers(client, "x")
    expect(xs).to eq(xs.sort.uniq)
  ensure
    client&.close
  end

  # Issue #8's defect 7 was read from the code as "a stream still joining
  # when the subscriber link drops gets no reset and a silent hole". It is
  # not a defect (see send_marked_resets): such a stream's own backlog read
  # covers it. These show it, with the read answered late so that the drop
  # and the publishes it misses fall inside the join.
  [[50, 20, "every message after its cursor, once, in order"],
   [5, 300, "a reset naming the channel where the backlog proves the hole, and order after it"]].each do |backlog, missed, what|
    it "gives a stream still joining when the subscriber link drops #{what} (backlog #{backlog}, #{missed} missed)" do
      @redis = RedisServer.new.start
      @proxy = FaultProxy.new(@redis.port)
      @server = AppServer.new(config: { redis_url: "redis://127.0.0.1:#{@proxy.port}/0", backlog_size: backlog,
                                        command_timeout: 5 }).start
      Spillway.configure(redis_url: @redis.url, backlog_size: backlog)
      live = SSEClient.open(@server.port, %w[j])
      live.wait_for_head
      wait_until { s = @server.stats; s[:connections] == 1 && s[:joining].zero? && s[:redis_connected] }
      cursor = Spillway.publish("j", "j-1")
      (2..3).each { |i| Spillway.publish("j", "j-#{i}") }
      live.wait_for_events(3)

      # The joining stream's backlog read answers a second late; while it is
      # out, the subscriber link is cut and `missed` messages go by.
      @proxy.delay_scripted = 1.0
      reads = @proxy.requests_with("spillway:s:j")
      joining = SSEClient.open(@server.port, %w[j], cursor: cursor)
      wait_until(message: "its backlog read sent") { @proxy.requests_with("spillway:s:j") > reads }
      expect(@server.stats[:joining]).to eq(1)
      repairs = @server.stats[:gap_repairs]
      expect(@redis.call("CLIENT", "KILL", "TYPE", "pubsub")).to eq(1)
      last = 3 + missed
      (4..last).each { |i| Spillway.publish("j", "j-#{i}") }
      expect(@server.stats[:joining]).to eq(1) # all of it inside the join
      wait_until(timeout: 20, message: "the repair") { @server.stats[:gap_repairs] > repairs }
      @proxy.delay_scripted = 0
      Spillway.publish("j", "j-#{last + 1}")
      [joining, live].each do |c|
        wait_until(timeout: 15, message: "j-#{last + 1}") { c.pump; c.data.include?("j-#{last + 1}") }
      end

      got = numbers(joining, "j")
      resets = joining.events.select { |e| e.type == "reset" }
      if backlog > missed
        expect(resets).to eq([])
        expect(got).to eq((2..last + 1).to_a)
      else
        # Redis keeps about `backlog` entries: j-2 is gone, a hole is proven
        # before anything after the cursor is sent. One reset: its own
        # resume's. The repair's would be a second, about a hole the stream
        # does not have (its read reached past the drop).
        expect(resets.map { |e| JSON.parse(e.data)["channels"] }).to eq([["j"]])
        expect(joining.events.first.type).to eq("reset")
        expect(got).to eq(got.sort.uniq)
        expect(got.last).to eq(last + 1)
      end
      # The stream that was live all along: the same promise.
      live_got = numbers(live, "j")
      expect(live_got).to eq(live_got.sort.uniq)
      expect(live_got).to eq((1..last + 1).to_a) if live.events.none? { |e| e.type == "reset" }
    ensure
      live&.close
      joining&.close
    end
  end

  shared_examples "a resume after Redis lost its data" do |lose|
    it "tells the client (event: reset) instead of leaving a hole" do
      @redis = RedisServer.new.start
      # No linger: once the client left, the hub drops the channel, so what
      # it misses only Redis had. (Within the linger the hub receives d-2 and
      # d-3 live and a resume is served from its cache, all of it, no reset:
      # which of the two this test saw depended on the machine's speed.)
      @server = AppServer.new(config: { redis_url: @redis.url, unsubscribe_linger: 0 }).start
      Spillway.configure(redis_url: @redis.url)
      client = SSEClient.open(@server.port, "d")
      client.wait_for_head
      wait_until { s = @server.stats; s[:connections] == 1 && s[:joining].zero? && s[:redis_connected] }
      seen = Spillway.publish("d", "d-1")
      client.wait_for_events(1)
      client.close
      wait_until(message: "the channel dropped") { s = @server.stats; s[:connections].zero? && s[:channels].zero? }
      Spillway.publish("d", "d-2") # missed by the client, then lost by Redis
      Spillway.publish("d", "d-3")
      instance_exec(&lose)
      back = SSEClient.open(@server.port, "d", cursor: seen)
      wait_until(timeout: 15, message: "a reset on the resumed stream") do
        back.pump
        back.events.any? { |e| e.type == "reset" }
      end
      reset = back.events.find { |e| e.type == "reset" }
      expect(JSON.parse(reset.data)["channels"]).to eq(["d"])
      # Nothing before the reset pretends to be the missed history.
      expect(back.events.take_while { |e| e.type != "reset" }.map(&:data)).to eq([])
      Spillway.publish("d", "d-5")
      wait_until(message: "d-5 after the reset") { back.pump; back.data.include?("d-5") }
    ensure
      back&.close
    end
  end

  context "FLUSHALL, then a publish before the resume" do
    include_examples "a resume after Redis lost its data", -> {
      @redis.call("FLUSHALL")
      Spillway.publish("d", "d-4")
    }
  end

  context "a restart without persistence (SHUTDOWN NOSAVE)" do
    include_examples "a resume after Redis lost its data", -> {
      begin
        @redis.call("SHUTDOWN", "NOSAVE")
      rescue IOError, SystemCallError, RespClient::Error
        nil # the connection closes under the command
      end
      @redis.stop
      @redis.start
      wait_until(timeout: 15, message: "the hub back on the empty Redis") { @server.stats[:redis_connected] }
    }
  end
end
