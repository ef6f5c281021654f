# frozen_string_literal: true

require "spec_helper"
require "openssl"

# The same streams on every common app server and socket type: the
# Gemfile's Puma and Debian's Puma 5.6 with Rack 2, single and clustered;
# Unicorn; Pitchfork; Falcon; Passenger Standalone; Puma terminating TLS
# itself, WEBrick without full hijack. Each names the path its streams take
# (native or fallback).
# Passenger options for streams: its core may send a process any number of
# requests (it counts each open stream as one in flight; what a Ruby app
# advertises is 1), to the least busy process (Passenger 6's routing sends
# each request to the oldest process below its limit: with none, always the
# same process).
PASSENGER_STREAMING = %w[--force-max-concurrent-requests-per-process 0 --old-routing].freeze

RSpec.describe "App servers" do
  def exercise(server, tls: false)
    client = tls ? TLSClient.open(server.port, "srv:one") : SSEClient.open(server.port, "srv:one")
    client.wait_for_head
    expect(client.status).to eq(200)
    wait_until(message: "stream attached") { server.stats[:connections] == 1 }
    ids = Array.new(3) { |i| server.publish("srv:one", "m#{i}") }
    expect(client.wait_for_events(3).map(&:data)).to eq(%w[m0 m1 m2])
    expect(client.events.last.last_event_id).to eq(ids.last)
    # The app still answers while the stream is open.
    expect(server.get("/ping").body).to eq("pong")
    client.close
    wait_until(message: "stream released") { server.stats[:connections].zero? }
  end

  it "works on the Gemfile's Puma (full hijack, native path)" do
    server = AppServer.new(server: :puma).start
    expect(File.read(server.log)).to match(/Puma version: [6-9]\./)
    exercise(server)
    expect(server.stats[:fallback_total]).to eq(0)
    expect(File.read(server.log)).not_to include("Spillway: ")
  ensure
    server&.stop
  end

  it "works on Falcon over HTTP/1.1 (full hijack of a plain socket, native path)" do
    # protocol-rack's rack.hijack hands over a dup of the connection's
    # socket; Falcon closes its own once the request returns.
    server = AppServer.new(server: :falcon).start
    expect(File.read(server.log)).to include("Falcon v")
    exercise(server)
    expect(server.stats[:fallback_total]).to eq(0)
    expect(File.read(server.log)).not_to include("Spillway: ")
  ensure
    server&.stop
  end

  it "works on Falcon over HTTP/2 (no hijack: the streaming-body fallback, the worker still serving)" do
    # An HTTP/2 stream cannot be hijacked: Falcon offers no rack.hijack
    # there, and the stream takes the body path.
    server = AppServer.new(server: :falcon).start
    client = H2SSEClient.open(server.port, "srv:one")
    client.wait_for_head
    expect([client.status, client.version]).to eq([200, "HTTP/2"])
    wait_until(message: "stream attached") { server.stats[:connections] == 1 }
    ids = Array.new(3) { |i| server.publish("srv:one", "m#{i}") }
    expect(client.wait_for_events(3).map { |e| [e.data, e.last_event_id] }).to eq(%w[m0 m1 m2].zip(ids))
    expect(server.get("/ping").body).to eq("pong")
    stats = server.stats
    expect(stats.slice(:fallback_total, :fallback_streams)).to eq(fallback_total: 1, fallback_streams: 1)
    expect(File.read(server.log)).to include("supports no hijack")
    client.close
    wait_until(message: "stream released") { server.stats[:connections].zero? }
    expect(server.stats[:fallback_streams]).to eq(0)
  ensure
    client&.close
    server&.stop
  end

  # Passenger Standalone, builtin engine, one app process (max pool size 1).
  # Passenger's core proxies every request to the app over a Unix socket and
  # hands the app, on full hijack, a PhusionPassenger::Utils::UnseekableSocket
  # around it: Spillway gives the hub the socket inside (native path).
  describe "Passenger" do
    before(:all) do
      # Asked in a child: this process stays without PhusionPassenger.
      found = system(RbConfig.ruby, "-e", <<~RUBY)
        require "phusion_passenger"
        PhusionPassenger.locate_directories
        PhusionPassenger.require_passenger_lib "constants"
        exit(PhusionPassenger.find_support_binary(PhusionPassenger::AGENT_EXE) ? 0 : 1)
      RUBY
      # Not a skip: rows of the README's server table stand on these.
      raise "Passenger's agent is not built; bin/setup builds it (passenger-config compile-agent --auto)" unless found
    end

    it "works with unlimited concurrency (the wrapper unwrapped, native path; the process serves other requests meanwhile)" do
      # --force-max-concurrent-requests-per-process 0: the core sends the
      # process requests while its streams are open (exercise publishes and
      # pings with one open).
      server = AppServer.new(server: :passenger, passenger_args: PASSENGER_STREAMING).start
      expect(File.read(server.log)).to include("Passenger core online")
      exercise(server)
      # Two streams at once on the one process; the head came through
      # Passenger's core.
      two = Array.new(2) { SSEClient.open(server.port, "srv:two") }
      two.each(&:wait_for_head)
      expect(two.map(&:status)).to eq([200, 200])
      expect(two.first.headers["x-powered-by"]).to start_with("Phusion Passenger(R) 6.")
      wait_until(message: "two streams attached") { server.stats[:connections] == 2 }
      id = server.publish("srv:two", "both")
      two.each { |c| expect(c.wait_for_events(1).map { |e| [e.data, e.last_event_id] }).to eq([["both", id]]) }
      expect(server.get("/ping").body).to eq("pong")
      stats = server.stats
      expect(stats.slice(:connections, :fallback_total, :fallback_streams)).to eq(connections: 2, fallback_total: 0,
                                                                                  fallback_streams: 0)
      two.each(&:close)
      wait_until(message: "streams released") { server.stats[:connections].zero? }
      expect(File.read(server.log)).not_to include("Spillway: ")
    ensure
      two&.each(&:close)
      server&.stop
    end

    it "leaves a client that stops reading to Passenger's core, which buffers for it (never dropped as slow)" do
      # The hub writes to Passenger's core, not to the client: the core
      # reads whatever comes and buffers it for the client (up to 128 MiB
      # per connection by default, its response_buffer_high_watermark). Here
      # 8 MB for a client that reads nothing, with a 64 KiB outbox_limit:
      # on Puma the same stream is dropped as slow.
      server = AppServer.new(server: :passenger, passenger_args: PASSENGER_STREAMING,
                             config: { outbox_limit: 64 * 1024, max_lag: 1 }).start
      client = SSEClient.open(server.port, "srv:slow", rcvbuf: 4096)
      client.wait_for_head
      wait_until(message: "stream attached") { server.stats[:connections] == 1 }
      ids = Array.new(4) do |i|
        JSON.parse(server.post("/publish_seq?channel=srv:slow&from=#{i * 200}&count=200&size=10000").body)
      end.flatten
      wait_until(message: "the hub done with all 800 messages") { server.stats[:delivered] >= 800 }
      expect(server.stats.slice(:connections, :dropped_slow)).to eq(connections: 1, dropped_slow: 0)
      # All of it reaches the client once it reads, in order.
      expect(client.wait_for_events(800, timeout: 30).map(&:last_event_id)).to eq(ids)
    ensure
      client&.close
      server&.stop
    end

    it "with its default concurrency holds the process while a stream is open (the core counts it as a request)" do
      # What the app advertises, 1 request per process: Passenger's core
      # queues the next request until the stream ends. The app process
      # itself is free (the stream is on the native path).
      server = AppServer.new(server: :passenger).start
      client = SSEClient.open(server.port, "srv:one")
      client.wait_for_head
      expect(client.status).to eq(200)
      ping = Thread.new { server.get("/ping").body }
      # A negative, so a bounded wait: the ping must not come back while the
      # stream is open.
      expect(ping.join(1.5)).to be_nil
      client.close
      expect(ping.join(10)&.value).to eq("pong")
      stats = server.stats
      expect(stats.slice(:connections, :fallback_total)).to eq(connections: 0, fallback_total: 0)
    ensure
      client&.close
      server&.stop
    end
  end

  it "works on Debian's Puma 5.6 with Rack 2 (full hijack, native path)" do
    server = AppServer.new(puma: :debian).start
    expect(File.read(server.log)).to include("Puma version: 5.6")
    expect(server.get("/rack_version").body).to start_with("2.2")
    exercise(server)
    expect(server.stats[:fallback_total]).to eq(0)
  ensure
    server&.stop
  end

  it "streams through the Ruby pump when Puma terminates TLS itself, never plaintext" do
    tls = SelfSigned.files
    server = AppServer.new(tls: tls).start
    exercise(server, tls: true)
    stats = server.stats
    expect(stats[:fallback_total]).to eq(1)
    expect(stats[:fallback_streams]).to eq(0)
    expect(File.read(server.log)).to include("not a plain socket")
  ensure
    server&.stop
  end

  it "streams through partial hijack on WEBrick and warns once" do
    # WEBrick writes to the client itself: a client that left is noticed
    # at the next write, the heartbeat at the latest.
    server = AppServer.new(puma: :webrick, config: { heartbeat: 0.5 }).start
    exercise(server)
    exercise(server)
    expect(server.stats[:fallback_total]).to eq(2)
    expect(File.read(server.log).scan("Spillway: ").size).to eq(1)
  ensure
    server&.stop
  end
end

# SSEClient over TLS (certificate not verified: a throwaway self-signed one).
class TLSClient < SSEClient
  def self.open(port, channel)
    new(port, "/stream?channel=#{channel}")
  end

  def initialize(port, path)
    tcp = Socket.tcp("127.0.0.1", port)
    ctx = OpenSSL::SSL::SSLContext.new
    ctx.verify_mode = OpenSSL::SSL::VERIFY_NONE
    @ssl = OpenSSL::SSL::SSLSocket.new(tcp, ctx)
    @ssl.sync_close = true
    @ssl.connect
    @ssl.write("GET #{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    @sock = @ssl
    @parser = SSEParser.new
    @pending = +"".b
    @raw = +"".b
    @eof = false
  end

  def to_io
    @ssl.to_io
  end

  def pump
    return false if @eof

    loop do
      chunk = @ssl.read_nonblock(65_536, exception: false)
      case chunk
      when :wait_readable, :wait_writable then return true
      when nil
        @eof = true
        return false
      else
        @raw << chunk
        send(:consume, chunk)
      end
    end
  rescue OpenSSL::SSL::SSLError, Errno::ECONNRESET, IOError
    @eof = true
    false
  end
end

# Preforking servers, two workers each, the Redis backend: streams land on
# both workers, a publish from anywhere reaches every stream, and a worker
# killed with SIGKILL is replaced by one that serves new streams. With
# preload the master loads the app (and BOOT_PUBLISH opens its Redis
# connection) before the forks: Spillway notices them itself.
RSpec.describe "Preforking app servers" do
  before(:all) { @redis = RedisServer.new.start }
  after(:all) { @redis&.cleanup }

  def connections(workers)
    workers.values.sum { |s| s[:connections] }
  end

  # Opens streams a round at a time (each holds a worker 0.2s in
  # authorize, so a round spreads) until every worker has one. Returns the
  # worker stats that show it.
  def open_on_every_worker(server, swarm, channel, workers: 2, round: 4)
    wait_until(timeout: 30, interval: 0, message: "streams on #{workers} workers") do
      fresh = Array.new(round) { SSEClient.open(server.port, channel) }
      fresh.each { |c| swarm << c }
      swarm.wait_all(message: "heads") { |c| c.eof? || c.status }
      expect(fresh.map(&:status)).to all(eq(200))
      per = server.wait_workers(workers, message: "all #{swarm.clients.size} streams attached") do |w|
        connections(w) == swarm.clients.count { |c| !c.eof? }
      end
      per.values.all? { |s| s[:connections].positive? } && per
    end
  end

  def check(server, channel)
    per = server.worker_stats(2)
    expect(per.keys).not_to include(server.pid)

    # One stream: its head, three messages in order with their ids (each
    # published by whichever worker takes the POST), the app still
    # answering, the stream released once the client leaves.
    one = SSEClient.open(server.port, "#{channel}:one")
    one.wait_for_head
    expect(one.status).to eq(200)
    server.wait_workers(2, message: "the stream attached") { |w| connections(w) == 1 }
    ids = Array.new(3) { |i| server.publish("#{channel}:one", "m#{i}") }
    expect(one.wait_for_events(3).map { |e| [e.data, e.last_event_id] }).to eq(%w[m0 m1 m2].zip(ids))
    expect(server.get("/ping").body).to eq("pong")
    one.close
    server.wait_workers(2, message: "the stream released") { |w| connections(w).zero? }

    # Streams on both workers; a publish from this process and one from a
    # worker reach all of them through Redis.
    swarm = SSESwarm.new
    per = open_on_every_worker(server, swarm, channel)
    Spillway.configure(redis_url: @redis.url)
    ids = [Spillway.publish(channel, "from the test"), server.publish(channel, "from a worker")]
    swarm.wait_all(message: "2 messages on every stream") { |c| c.events.size >= 2 }
    swarm.clients.each do |c|
      expect(c.events.map { |e| [e.data, e.last_event_id] }).to eq([["from the test", ids[0]], ["from a worker", ids[1]]])
    end
    # The native path everywhere: no stream went through a Ruby thread.
    expect(per.values.map { |s| s[:fallback_total] }).to eq([0, 0])

    # SIGKILL one worker: its streams see EOF, the master replaces it, and
    # the new worker serves streams that hear a publish like the others.
    victim, victim_stats = per.find { |_, s| s[:connections].positive? }
    Process.kill("KILL", victim)
    wait_until(message: "the killed worker's #{victim_stats[:connections]} streams closed") do
      swarm.pump_all
      swarm.clients.count(&:eof?) == victim_stats[:connections]
    end
    replaced = server.wait_workers(2, timeout: 30, message: "a worker replacing #{victim}") do |w|
      !w.key?(victim) && (w.keys - per.keys).size == 1
    end
    newcomer = (replaced.keys - per.keys).first
    expect(replaced[newcomer][:connections]).to eq(0)
    survivors = swarm.clients.reject(&:eof?)
    per = open_on_every_worker(server, swarm, channel)
    expect(per.keys).to contain_exactly(newcomer, *(replaced.keys - [newcomer]))
    id = Spillway.publish(channel, "after the kill")
    live = swarm.clients.reject(&:eof?)
    expect(live.size).to eq(connections(per))
    SSESwarm.new(live).wait_all(message: "the publish after the kill everywhere") { |c| c.events.any? { |e| e.data == "after the kill" } }
    live.each { |c| expect([c.events.last.data, c.events.last.last_event_id]).to eq(["after the kill", id]) }
    expect(survivors).to all(satisfy { |c| c.events.size == 3 })

    swarm.close_all
    server.wait_workers(2, message: "every stream released") { |w| connections(w).zero? }
    # No fallback warning in any worker's log.
    expect(File.read(server.log)).not_to match(/not a plain socket|no full hijack|supports no hijack/)
    per
  ensure
    swarm&.close_all
  end

  def start(**opts)
    AppServer.new(config: { redis_url: @redis.url }, middleware: { authorize: "slow" }, workers: 2,
                  env: { "BOOT_PUBLISH" => "1" }, **opts).start
  end

  it "puma -w 2 --preload, the Gemfile's Puma (native path)" do
    server = start(server: :puma, preload: true)
    check(server, "puma")
  ensure
    server&.stop
  end

  it "Debian's puma -w 2 --preload, Puma 5.6 with Rack 2 (native path)" do
    server = start(server: :debian_puma, preload: true)
    expect(File.read(server.log)).to include("Puma version: 5.6")
    check(server, "debian-puma")
  ensure
    server&.stop
  end

  it "Unicorn, preload_app, no Spillway hook in after_fork (native path)" do
    server = start(server: :unicorn, preload: true)
    check(server, "unicorn")
    expect(server.after_fork_pids).to be_empty
  ensure
    server&.stop
  end

  it "Unicorn, preload_app, Spillway.after_fork in after_fork (native path)" do
    server = start(server: :unicorn, preload: true, after_fork: true)
    per = check(server, "unicorn-hook")
    # The hook ran in every worker, the replacement's included.
    expect(server.after_fork_pids).to include(*per.keys)
  ensure
    server&.stop
  end

  it "Pitchfork, workers forked from its mold (native path)" do
    server = start(server: :pitchfork)
    check(server, "pitchfork")
  ensure
    server&.stop
  end

  it "Pitchfork reforking: the retired workers' streams get a last retry hint and resume on the new ones" do
    server = start(server: :pitchfork, refork_after: [30])
    swarm = SSESwarm.new
    old = open_on_every_worker(server, swarm, "refork")
    Spillway.configure(redis_url: @redis.url)
    first = Spillway.publish("refork", "before")
    swarm.wait_all(message: "the first message") { |c| c.events.size == 1 }
    # 30 requests to a worker make it the mold of a new generation; the old
    # workers leave gracefully, each stream hinted to come back. Which
    # worker takes a request is the kernel's choice, so requests go on
    # until one of them has had its 30 (a fixed 30 split over two workers
    # may reach neither's count).
    wait_until(timeout: 30, message: "the old workers' streams closed") do
      server.get("/ping")
      swarm.pump_all
      swarm.clients.all?(&:eof?)
    end
    expect(swarm.clients.map { |c| c.raw.scan("retry:").size }).to all(eq(2))
    missed = Spillway.publish("refork", "while away")
    back = SSEClient.open(server.port, "refork", cursor: first)
    back.wait_for_head
    expect(back.wait_for_events(1).map { |e| [e.data, e.last_event_id] }).to eq([["while away", missed]])
    now = server.wait_workers(2, message: "the new generation holding the stream") { |w| connections(w) == 1 }
    expect(now.keys & old.keys).to be_empty
    expect(File.read(server.log)).to include("gen=1")
  ensure
    back&.close
    swarm&.close_all
    server&.stop
  end

  it "Passenger Standalone, two app processes forked from its preloader, unlimited concurrency (native path)" do
    # Smart spawning: the preloader loads the app (and with BOOT_PUBLISH
    # opens its Redis connection) before it forks the app processes. The
    # core sends each process any number of requests
    # (--force-max-concurrent-requests-per-process 0), the least busy first.
    server = start(server: :passenger, preload: true, passenger_args: PASSENGER_STREAMING)
    check(server, "passenger")
  ensure
    server&.stop
  end

  it "Falcon, two forked containers (native path)" do
    server = start(server: :falcon)
    check(server, "falcon")
  ensure
    server&.stop
  end
end

# An SSE stream over HTTP/2 (prior knowledge, no TLS), read by async-http's
# client on a thread of its own; the same readers as SSEClient.
class H2SSEClient
  include Waiting

  attr_reader :status, :version, :parser

  def self.open(port, channel)
    new(port, "/stream?channel=#{URI.encode_www_form_component(channel)}")
  end

  def initialize(port, path)
    require "async"
    require "async/http/protocol/http2"
    require "protocol/http/request"
    @parser = SSEParser.new
    @chunks = Queue.new
    @socket = Socket.tcp("127.0.0.1", port)
    @stop, @stopper = IO.pipe
    @thread = Thread.new do
      Sync do |task|
        connection = Async::HTTP::Protocol::HTTP2.client(@socket)
        reader = task.async do
          request = Protocol::HTTP::Request["GET", path, { "accept" => "text/event-stream" }]
          request.scheme = "http"
          request.authority = "127.0.0.1:#{port}"
          response = connection.call(request)
          @chunks << [:head, response.status, response.version]
          while (chunk = response.body.read)
            @chunks << [:data, chunk]
          end
          @chunks << [:eof]
        end
        # close: the connection goes, as when a browser tab closes.
        @stop.wait_readable
        reader.stop
        connection.close
      end
    rescue StandardError => e
      @chunks << [:error, e]
    ensure
      @socket.close unless @socket.closed?
    end
  end

  def events
    @parser.events
  end

  def pump
    until @chunks.empty?
      kind, a, b = @chunks.pop
      case kind
      when :head then @status, @version = a, b
      when :data then @parser.feed(a)
      when :error then raise a
      end
    end
  end

  def wait_for_head(timeout: 10)
    wait_until(timeout: timeout, message: "HTTP/2 response head") { pump; @status }
  end

  def wait_for_events(count, timeout: 10)
    wait_until(timeout: timeout, message: "#{count} events (have #{events.size})") { pump; events.size >= count }
    events
  end

  def close
    return if @stopper.closed?

    @stopper.close
    @thread.join(5)
    @stop.close
  end
end
