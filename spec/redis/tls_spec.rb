# frozen_string_literal: true

require "spec_helper"
require "stringio"
require "logger"

# TLS to Redis (rediss://) against a real redis-server with --tls-port and
# its plaintext port off, with certificates the suite makes (SelfSigned.pki):
# the synchronous publisher in this process, the hub's links both here
# (publish_async) and in a real Puma serving the streams.
RSpec.describe "Redis over TLS (rediss://)" do
  before(:all) { @pki = SelfSigned.pki }
  after(:all) { FileUtils.rm_rf(@pki[:dir]) }

  after do
    @server&.stop
    @redis&.cleanup
  end

  attr_reader :pki

  def tls_redis(**tls)
    @redis = RedisServer.new(persistence: tls.delete(:persistence) || false, tls: { pki: pki, **tls }).start
  end

  def trusted(**extra)
    { ca_file: pki[:ca], **extra }
  end

  def client_cert
    trusted(cert_file: pki[:client_cert], key_file: pki[:client_key])
  end

  def start_app(url, tls, **config)
    @server = AppServer.new(config: { redis_url: url, redis_tls: tls, heartbeat: 2, connect_timeout: 0.5, **config }).start
  end

  def live_stream(channels, cursor: nil, count: 1)
    client = SSEClient.open(@server.port, channels, cursor: cursor)
    client.wait_for_head
    wait_until(message: "the stream live on a connected hub") do
      s = @server.stats
      s[:connections] == count && s[:joining].zero? && s[:redis_connected]
    end
    client
  end

  # A logger whose lines the example reads.
  def capture_log
    io = StringIO.new
    logger = Logger.new(io)
    [io, logger]
  end

  # The hub of this process tries to connect; its last_error once it failed.
  def hub_error
    Spillway.publish("probe", "x", async: true)
    wait_until(message: "the hub's Redis error") { Spillway.stats[:last_error] }
  end

  it "streams, publishes (sync and async) and resumes with Last-Event-ID over server-only TLS" do
    tls_redis
    Spillway.configure(redis_url: @redis.url, redis_tls: trusted)
    start_app(@redis.url, trusted)
    client = live_stream(%w[t])
    ids = (0..2).map { |i| Spillway.publish("t", "m-#{i}") }
    client.wait_for_events(3)
    expect(client.data).to eq(%w[m-0 m-1 m-2])
    expect(client.events.map(&:last_event_id)).to eq(ids)
    # This process's own hub: the command link over TLS.
    Spillway.publish("t", "m-3", async: true)
    expect(Spillway.flush(timeout: 10)).to be(true)
    client.wait_for_events(4)
    expect(client.data.last).to eq("m-3")
    # Both links of both hubs and the publisher speak TLS: the server has no
    # plaintext port at all.
    names = @redis.call("CLIENT", "LIST").scan(/name=(spillway-\w+)-\d+/).flatten
    expect(names.tally).to include("spillway-sub" => 2, "spillway-cmd" => 2)
    client.close

    Spillway.publish("t", "m-4")
    Spillway.publish("t", "m-5")
    resumed = live_stream(%w[t], cursor: ids[2])
    resumed.wait_for_events(3)
    resumed.pump
    expect(resumed.data).to eq(%w[m-3 m-4 m-5])
    expect(resumed.events.map(&:type).uniq).to eq(["message"]) # no reset
  ensure
    client&.close
    resumed&.close
  end

  it "verifies the name of the server given as server_name, and sends it as SNI" do
    tls_redis
    # 127.0.0.1 is checked as an IP address; server_name checks a DNS name instead.
    Spillway.configure(redis_url: @redis.url, redis_tls: trusted(server_name: "localhost"))
    expect(Spillway.publish("n", "1")).to match(/\A\d+-\d+\z/)
    Spillway.configure(redis_url: @redis.url, redis_tls: trusted(server_name: "redis.example.com"))
    expect { Spillway.publish("n", "2") }
      .to raise_error(Spillway::RedisError, /cannot connect to Redis at rediss:.*certificate verify failed: hostname mismatch/)
  end

  describe "with --tls-auth-clients yes" do
    it "works with a client certificate, on the publisher and the hub" do
      tls_redis(auth_clients: true)
      Spillway.configure(redis_url: @redis.url, redis_tls: client_cert)
      start_app(@redis.url, client_cert)
      client = live_stream(%w[c])
      Spillway.publish("c", "one")
      Spillway.publish("c", "two", async: true)
      expect(Spillway.flush(timeout: 10)).to be(true)
      client.wait_for_events(2)
      expect(client.data).to eq(%w[one two])
    ensure
      client&.close
    end

    it "fails without one, with an error that says Redis wants a client certificate" do
      tls_redis(auth_clients: true)
      io, logger = capture_log
      Spillway.configure(redis_url: @redis.url, redis_tls: trusted, logger: logger)
      expect { Spillway.publish("c", "x") }
        .to raise_error(Spillway::RedisError, /certificate required.*Redis wants a client certificate/)
      expect(hub_error).to match(/certificate required/)
      expect(Spillway.stats[:redis_connected]).to be(false)
      wait_until(message: "the log line") { io.string.include?("certificate required") }
    end
  end

  describe "when the server cannot be verified" do
    [
      [:wrong_ca, "a CA that did not sign it", "certificate verify failed: self-signed certificate in certificate chain"],
      [:expired, "an expired certificate", "certificate verify failed: certificate has expired"],
      [:wrong_name, "a certificate for another name", "certificate verify failed: IP address mismatch"]
    ].each do |kind, what, cause|
      it "refuses #{what} (publisher: RedisError; hub: last_error and a log line naming the cause)" do
        tls_redis(**(kind == :wrong_ca ? {} : { cert: kind }))
        io, logger = capture_log
        tls = kind == :wrong_ca ? { ca_file: pki[:wrong_ca] } : trusted
        Spillway.configure(redis_url: @redis.url, redis_tls: tls, logger: logger)
        expect { Spillway.publish("v", "x") }
          .to raise_error(Spillway::RedisError, /cannot connect to Redis at rediss:.*#{Regexp.escape(cause)}/)
        expect(hub_error).to include("TLS handshake: #{cause}")
        expect(Spillway.stats[:redis_connected]).to be(false)
        wait_until(message: "the log line") { io.string.include?(cause) }
        # Nothing of ours reached Redis: no handshake command, no script.
        expect(@redis.call("INFO", "commandstats")).not_to match(/cmdstat_(eval|evalsha|script|client\|setname)/)
      end
    end

    it "names a hostname mismatch on a name" do
      tls_redis(cert: :wrong_name)
      Spillway.configure(redis_url: @redis.url(host: "localhost"), redis_tls: trusted)
      expect { Spillway.publish("v", "x") }.to raise_error(Spillway::RedisError, /certificate verify failed: hostname mismatch/)
    end

    it "connects anyway with verify: false, and says so once" do
      tls_redis(cert: :wrong_name)
      io, logger = capture_log
      Spillway.configure(redis_url: @redis.url(host: "localhost"), redis_tls: { ca_file: pki[:wrong_ca], verify: false },
                         logger: logger)
      expect(Spillway.publish("v", "1")).to match(/\A\d+-\d+\z/)
      Spillway.publish("v", "2", async: true)
      expect(Spillway.flush(timeout: 10)).to be(true)
      Spillway.configure(redis_url: @redis.url, redis_tls: { verify: false }, logger: logger)
      Spillway.publish("v", "3")
      expect(io.string.scan("redis_tls verify: false").size).to eq(1)
    end
  end

  it "repairs the gap after the TLS links are cut or Redis restarts mid-stream: every number once, in order" do
    count = 900
    tls_redis(persistence: true)
    Spillway.configure(redis_url: @redis.url, redis_tls: trusted, connect_timeout: 0.5, command_timeout: 0.5)
    start_app(@redis.url, trusted)
    swarm = SSESwarm.new(Array.new(5) { SSEClient.open(@server.port, "seq") })
    swarm.wait_all(message: "heads") { |c| c.status == 200 }
    wait_until(message: "streams live") { s = @server.stats; s[:connections] == 5 && s[:joining].zero? && s[:redis_connected] }
    published = 0
    pub = Thread.new do
      (1..count).each do |i|
        deadline = monotonic + 30
        begin
          Spillway.publish("seq", i.to_s, idempotency_key: "seq-#{i}")
        rescue Spillway::RedisError
          raise if monotonic > deadline

          retry # the same key: published at most once
        end
        published = i
        sleep 0.002 if (i % 10).zero?
      end
    end
    wait_until(timeout: 30, message: "a third") { published >= count / 3 }
    expect(@redis.call("CLIENT", "KILL", "TYPE", "pubsub")).to eq(1)
    wait_until(timeout: 30, message: "half") { published >= count / 2 }
    expect(@redis.call("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")).to be >= 1
    wait_until(timeout: 30, message: "two thirds") { published >= 2 * count / 3 }
    @redis.restart
    pub.join
    swarm.wait_all(timeout: 60, message: "all #{count} numbers on every stream") { |c| c.events.size >= count }
    swarm.pump_all
    swarm.clients.each { |c| expect(c.data.map { |d| Integer(d) }).to eq((1..count).to_a) }
    stats = @server.stats
    expect(stats[:redis_reconnects]).to be >= 2
    expect(stats[:gap_repairs]).to be >= 2
  ensure
    pub&.kill
    swarm&.close_all
  end
end
