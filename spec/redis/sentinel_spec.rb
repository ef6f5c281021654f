# frozen_string_literal: true

require "spec_helper"
require "socket"

# Redis Sentinel with real processes: three `redis-server --sentinel`, a
# primary and a replica (SentinelGroup). The hub's links and the publisher
# ask the sentinels for the primary, check ROLE, and follow a failover
# (links dropped by the sentinels' reconfiguration, READONLY, a killed
# primary); bad input fails clearly.
RSpec.describe "Redis Sentinel" do
  FULL_SENTINEL = ENV["SPILLWAY_FAULTS"] == "full"
  SENTINEL_CHANNELS = %w[a b c].freeze

  # A sentinel that names whatever address it is told to (or no master):
  # for a primary that refuses or is not the primary.
  class FakeSentinel
    attr_reader :port

    def initialize(&answer)
      @server = TCPServer.new("127.0.0.1", 0)
      @port = @server.addr[1]
      @answer = answer
      @thread = Thread.new { loop { serve(@server.accept) } rescue IOError }
    end

    def address
      "127.0.0.1:#{port}"
    end

    def serve(sock)
      while (line = sock.gets)
        argc = Integer(line[1..])
        args = Array.new(argc) { sock.gets; sock.gets.chomp }
        reply = @answer.call(args)
        sock.write(reply.nil? ? "*-1\r\n" : "*2\r\n$#{reply[0].bytesize}\r\n#{reply[0]}\r\n$#{reply[1].to_s.bytesize}\r\n#{reply[1]}\r\n")
      end
    rescue IOError, SystemCallError
      nil
    ensure
      sock&.close
    end

    def close
      @server.close
      @thread.join(1)
    end
  end

  after do
    @publisher_pid && (Process.kill("KILL", @publisher_pid) rescue nil) && (Process.wait(@publisher_pid) rescue nil)
    @servers&.each(&:stop)
    @group&.cleanup
    @fakes&.each(&:close)
  end

  def sentinel_config(group, **more)
    { redis_sentinels: group.addresses, redis_sentinel_master: group.master }.merge(more)
  end

  describe "bad input" do
    it "refuses sentinel settings that cannot work at configure time" do
      expect { Spillway.configure(redis_sentinels: ["127.0.0.1:26379"]) }
        .to raise_error(ArgumentError, /redis_sentinels needs the name of the master they monitor/)
      expect { Spillway.configure(redis_sentinels: ["127.0.0.1:0"], redis_sentinel_master: "m") }
        .to raise_error(ArgumentError, /"127.0.0.1:0" is not "host:port"/)
      expect { Spillway.configure(redis_sentinel_master: "m") }.to raise_error(ArgumentError, /redis_sentinels is not/)
      expect { Spillway.configure(redis_sentinels: "h:26379", redis_url: "redis://m:6380/0") }
        .to raise_error(ArgumentError, /port comes from the sentinels/)
      expect { Spillway.configure(redis_sentinels: "h:26379", redis_url: "redis://m/0", redis_sentinel_master: "other") }
        .to raise_error(ArgumentError, /names "m" but redis_sentinel_master is "other"/)
      expect { Spillway.configure(redis_sentinels: "h:26379", redis_url: "unix:///tmp/r.sock", redis_sentinel_master: "m") }
        .to raise_error(ArgumentError, /unix:\/\/ Redis URL/)
      config = Spillway.configure(redis_sentinels: "h1, [::1]:5000", redis_url: "redis://:pw@mymaster/2", sentinel_password: "s3cret")
      expect(config.native_options).to include(redis_sentinels: "h1:26379,[::1]:5000", redis_sentinel_master: "mymaster",
                                               redis_password: "pw", redis_db: 2, sentinel_password: "s3cret")
      expect(config.inspect).not_to include("s3cret")
    end

    it "raises RedisError naming the cause for unreachable sentinels and an unknown master" do
      ports = Array.new(2) { free_port }
      Spillway.configure(redis_sentinels: ports.map { |p| "127.0.0.1:#{p}" }, redis_sentinel_master: "mymaster",
                         connect_timeout: 0.2, command_timeout: 0.2)
      expect { Spillway.publish("x", "1") }
        .to raise_error(Spillway::RedisError, /no sentinel answered for master "mymaster": 127.0.0.1:#{ports[0]}: Connection refused; 127.0.0.1:#{ports[1]}: Connection refused/)

      @fakes = [FakeSentinel.new { nil }]
      # The fake answers from a thread of this process: time enough under valgrind.
      Spillway.configure(redis_sentinels: @fakes.map(&:address), redis_sentinel_master: "nope", command_timeout: 1.0 * Waiting::SLOW)
      expect { Spillway.publish("x", "1") }.to raise_error(Spillway::RedisError, /no sentinel knows a master named "nope"/)
    end

    it "raises RedisError for a named primary that refuses, or that is a replica" do
      primary = RedisServer.new.start
      replica = RedisServer.new(args: ["--replicaof", "127.0.0.1", primary.port.to_s]).start
      closed = free_port
      @fakes = [FakeSentinel.new { ["127.0.0.1", closed] }, FakeSentinel.new { ["127.0.0.1", replica.port] }]
      Spillway.configure(redis_sentinels: [@fakes[0].address], redis_sentinel_master: "mymaster",
                         connect_timeout: 0.2, command_timeout: 0.2)
      expect { Spillway.publish("x", "1") }
        .to raise_error(Spillway::RedisError, /cannot connect to the Redis primary of mymaster at 127.0.0.1:#{closed}: Connection refused/)
      Spillway.configure(redis_sentinels: [@fakes[1].address])
      expect { Spillway.publish("x", "1") }
        .to raise_error(Spillway::RedisError, /127.0.0.1:#{replica.port}, named by the sentinels as the primary of mymaster, is a slave, not the primary/)
      # The hub: a log line naming the cause, and reconnects; no crash.
      server = AppServer.new(config: { redis_sentinels: [@fakes[1].address], redis_sentinel_master: "mymaster" }).start
      (@servers = []) << server
      client = SSEClient.open(server.port, "x")
      client.wait_for_head
      wait_until(message: "the role in the log") { server.log_tail.include?("is a slave, not the primary") }
      expect(server.stats[:redis_connected]).to be(false)
      expect(server.log_tail).to match(/Redis (command|subscriber) link: role: 127.0.0.1:#{replica.port} \(named by the sentinels as the primary of mymaster\) is a slave/)
    ensure
      client&.close
      [primary, replica].compact.each(&:cleanup)
    end

    it "logs unreachable sentinels and an unknown master on the hub, and connects once they answer" do
      port = free_port
      server = AppServer.new(config: { redis_sentinels: ["127.0.0.1:#{port}"], redis_sentinel_master: "mymaster",
                                       connect_timeout: 0.2 }).start
      (@servers = []) << server
      client = SSEClient.open(server.port, "x")
      client.wait_for_head
      wait_until(message: "the log line") { server.log_tail.include?("sentinels: no sentinel answered for master \"mymaster\": 127.0.0.1:#{port}: Connection refused") }
      expect(server.stats[:redis_connected]).to be(false)
      unknown = AppServer.new(config: { redis_sentinels: ["127.0.0.1:#{port}"], redis_sentinel_master: "nope" }).start
      @servers << unknown
      redis = RedisServer.new.start
      fake = TCPServer.new("127.0.0.1", port) # now something answers there: a sentinel that knows mymaster only
      @fakes = [FakeSentinel.allocate.tap do |f|
        f.instance_variable_set(:@server, fake)
        f.instance_variable_set(:@port, port)
        f.instance_variable_set(:@answer, ->(args) { args[2] == "mymaster" ? ["127.0.0.1", redis.port] : nil })
        f.instance_variable_set(:@thread, Thread.new { loop { f.serve(fake.accept) } rescue IOError })
      end]
      c2 = SSEClient.open(unknown.port, "x")
      c2.wait_for_head
      wait_until(timeout: 15, message: "the hub connected") { server.stats[:redis_connected] }
      Spillway.configure(redis_sentinels: ["127.0.0.1:#{port}"], redis_sentinel_master: "mymaster")
      id = Spillway.publish("x", "hello")
      expect(client.wait_for_events(1).map(&:last_event_id)).to eq([id])
      wait_until(timeout: 15, message: "the unknown master logged") { unknown.log_tail.include?("no sentinel knows a master named \"nope\"") }
      expect(unknown.stats[:redis_connected]).to be(false)
    ensure
      [client, c2].compact.each(&:close)
      redis&.cleanup
    end
  end

  def progress
    text = File.exist?(@progress_file) ? File.read(@progress_file) : "0 0"
    n, retries, done = text.split
    [Integer(n), Integer(retries), done == "done"]
  end

  def start_publisher(group, per_channel, rate)
    dir = group.sentinels.first.dir
    @progress_file = File.join(dir, "progress")
    lib = File.expand_path("../../lib", __dir__)
    script = File.expand_path("../fixtures/numbered_publisher.rb", __dir__)
    # A backlog that holds the whole run: the final primary's history then
    # shows every hole a failover made, not only the last 1,000.
    env = { "SPILLWAY_PUBLISHER_CONFIG" => JSON.generate(sentinel_config(group)), "PUBLISHER_BACKLOG" => "20000" }
    @publisher_pid = Process.spawn(env, RbConfig.ruby, "-I#{lib}", script, "redis:///0", SENTINEL_CHANNELS.join(","),
                                   per_channel.to_s, rate.to_s, @progress_file,
                                   out: File.join(dir, "publisher.log"), err: File.join(dir, "publisher.log"))
  end

  # Every message number of channel in the backlog of node, in order.
  def backlog_numbers(node, channel)
    node.call("XRANGE", "spillway:s:#{channel}", "-", "+").map { |_id, f| Integer(f.each_slice(2).to_h["f"][/data: [^:]+:(\d+)/, 1]) }
  end

  it "follows SENTINEL FAILOVER and then a SIGKILLed primary during numbered publishing: every message once and in order" do
    per_channel = FULL_SENTINEL ? 12_000 : 7000
    rate = 450 # messages per second over all channels
    streams = FULL_SENTINEL ? 100 : 15
    @group = SentinelGroup.new.start
    first = @group.primary
    @servers = Array.new(2) { AppServer.new(config: sentinel_config(@group, backlog_size: 20_000)).start }
    sets = [%w[a], %w[a b], %w[a b c], %w[b c]]
    swarm = SSESwarm.new(@servers.flat_map { |s| Array.new(streams) { |i| SequenceClient.new(s.port, sets[i % sets.size]) } })
    @servers.each do |s|
      wait_until(message: "streams live") { st = s.stats; st[:connections] == streams && st[:joining].zero? && st[:redis_connected] }
    end
    start_publisher(@group, per_channel, rate)
    total = per_channel * SENTINEL_CHANNELS.size
    swarm.wait_all(timeout: 60 * Waiting::SLOW, message: "a sixth published") { progress[0] >= total / 6 }
    second = @group.failover!
    warn [progress, [first, second].map { |n| [n.port, @group.role(n), n.call("XLEN", "spillway:s:a")] }].inspect if ENV["SENTINEL_DEBUG"]
    expect(second.port).not_to eq(first.port)
    at = progress[0]
    swarm.wait_all(timeout: 60 * Waiting::SLOW, message: "publishing on the new primary") { progress[0] >= at + 300 }
    # The old primary is the new one's replica, in sync, and every sentinel sees it: a failover can happen.
    begin
      swarm.wait_all(timeout: 60, message: "the sentinels settled after the failover") { @group.settled? && @group.replica_in_sync?(first) }
    rescue Waiting::Timeout => e
      raise e, "#{e.message}: #{@group.describe}"
    end
    warn [progress, [first, second].map { |n| [n.port, @group.role(n), n.call("XLEN", "spillway:s:a")] }].inspect if ENV["SENTINEL_DEBUG"]
    expect(progress[2]).to be(false), "the publisher finished before the primary was killed"
    third = @group.kill_primary!
    expect(third.port).to eq(first.port)
    swarm.wait_all(timeout: (total / rate + 90) * Waiting::SLOW, message: "the publisher") { progress[2] }
    begin
      swarm.wait_all(timeout: 30, message: "every stream complete") { |c| c.complete?(per_channel) }
    rescue Waiting::Timeout
      nil # reported below
    end
    stats = @servers.map { |s| s.stats.slice(:gap_repairs, :resets, :redis_reconnects, :errors, :last_error) }
    bad = swarm.clients.reject { |c| c.problems.empty? && c.complete?(per_channel) }
    summary = bad.map { |c| "#{c.channels.join('&')} at #{c.last} (#{c.resets} resets): #{c.problems.first(3).join('; ')}" }
    expect(summary).to eq([]), "#{bad.size} of #{swarm.clients.size} streams wrong:\n#{summary.first(10).join("\n")}\nservers: #{stats}"
    # The final primary's backlog: what a resume can still be served from.
    numbers = SENTINEL_CHANNELS.to_h { |ch| [ch, backlog_numbers(third, ch)] }
    if ENV["SENTINEL_DEBUG"]
      warn [third.port, @group.master_addr, @group.role(third), third.call("XLEN", "spillway:s:a"), third.call("GET", "spillway:id"), numbers.transform_values { |v| [v.first, v.last, v.size] }, progress].inspect
      warn third.call("INFO", "replication")
      warn File.read(File.join(third.dir, "redis.log")).lines.last(40).join
    end
    holes = numbers.transform_values { |ns| ns.each_cons(2).count { |x, y| y != x + 1 } }
    # What the hubs' witness found missing (scripts.h): a message a hub
    # received live from the old primary that the new one's history skips.
    witnessed = @servers.flat_map do |s|
      File.read(File.join(s.instance_variable_get(:@dir), "server.log")).scan(/lacks message (\S+) of (\S+),/)
    end.uniq
    # A claim the final history contradicts (the id is in it) was seen once
    # in CI: the reset it caused is unneeded, not a loss. Reported, not yet
    # understood (stop-16 note).
    witnessed.each do |id, ch|
      there = third.call("XRANGE", "spillway:s:#{ch}", id, id)
      warn "sentinel spec: the witness said #{id} of #{ch} was lost, but the final history has it" unless there.empty?
    end
    resets = swarm.clients.sum(&:resets)
    # A reset only where a promoted node provably lacked part of the
    # backlog: a hole in the numbers (acknowledged by the old primary, never
    # at its replica), or a message the hubs had that the history skips (its
    # number published again under another id by the publisher's retry, or
    # not: nobody can tell which other messages went with it).
    if holes.values.all?(&:zero?) && witnessed.empty?
      expect(resets).to eq(0), "#{resets} resets though the final backlog has no hole; servers: #{stats}"
    end
    warn "sentinel failover: holes #{holes}, witnessed #{witnessed.size}, resets #{resets}" if ENV["SENTINEL_DEBUG"]
    expect(numbers.values.map(&:last)).to all(eq(per_channel))
    expect(stats.map { |s| s[:redis_reconnects] }).to all(be >= 2)
  ensure
    swarm&.close_all
  end
end
