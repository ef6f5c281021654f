# frozen_string_literal: true

require "spec_helper"

# Spillway::Metrics mounted in the fixture app (GET /metrics) of a real Puma,
# read by a strict parser of the Prometheus text format.
RSpec.describe "Spillway::Metrics" do
  before(:all) { @server = AppServer.new.start }
  after(:all) { @server&.stop }

  let(:server) { @server }

  METRIC_NAME = /\A[a-zA-Z_:][a-zA-Z0-9_:]*\z/.freeze

  # { name => { type:, help:, samples: { labels Hash => value } } }; fails on
  # anything the format does not allow.
  def scrape
    res = server.get("/metrics")
    expect(res.code).to eq("200")
    expect(res["content-type"]).to eq("text/plain; version=0.0.4; charset=utf-8")
    families = {}
    res.body.each_line(chomp: true) do |line|
      case line
      when /\A# HELP (\S+) (.+)\z/
        expect(families).not_to have_key(Regexp.last_match(1))
        families[Regexp.last_match(1)] = { help: Regexp.last_match(2), samples: {} }
      when /\A# TYPE (\S+) (counter|gauge)\z/
        expect(families.keys.last).to eq(Regexp.last_match(1)) # HELP, then TYPE, then the samples
        families[Regexp.last_match(1)][:type] = Regexp.last_match(2)
      when /\A(\S+)\{([^}]*)\} (-?\d+)\z/
        name, labels, value = Regexp.last_match.captures
        expect(families.keys.last).to eq(name)
        expect(name).to match(METRIC_NAME)
        pairs = labels.scan(/(\w+)="([^"\\]*)"/).to_h
        expect(pairs.map { |k, v| %(#{k}="#{v}") }.join(",")).to eq(labels)
        families[name][:samples][pairs] = Integer(value)
      else
        raise "not the text format: #{line.inspect}"
      end
    end
    families.each do |name, f|
      expect(f[:type]).not_to be_nil, name
      expect(name).to end_with("_total") if f[:type] == "counter"
    end
    families
  end

  def value(families, name)
    samples = families.fetch(name)[:samples]
    expect(samples.size).to eq(1)
    samples.values.first
  end

  it "answers the issue's families with a pid label, and the numbers follow the traffic" do
    pid = Integer(server.get("/pid").body)
    before = scrape
    %w[spillway_connections spillway_channels spillway_delivered_total spillway_dropped_slow_total
       spillway_resets_total spillway_redis_connected spillway_redis_reconnects_total].each do |name|
      expect(before).to have_key(name)
    end
    before.each_value { |f| f[:samples].each_key { |labels| expect(labels["pid"]).to eq(pid.to_s) } }
    expect(before.fetch("spillway_info")[:samples].keys.first).to include("backend" => "memory")

    clients = Array.new(2) { |i| SSEClient.open(server.port, ["m:#{i}", "m:all"]) }
    wait_until { server.stats[:connections] == 2 }
    3.times { |i| server.publish("m:all", "x#{i}") }
    clients.each { |c| c.wait_for_events(3) }
    during = scrape
    expect(value(during, "spillway_connections")).to eq(2)
    expect(value(during, "spillway_channels")).to eq(3)
    expect(value(during, "spillway_delivered_total") - value(before, "spillway_delivered_total")).to eq(6)
    expect(value(during, "spillway_streams_opened_total") - value(before, "spillway_streams_opened_total")).to eq(2)

    clients.each(&:close)
    wait_until { server.stats[:connections].zero? }
    after = scrape
    expect(value(after, "spillway_connections")).to eq(0)
    # Counters never go down.
    during.each do |name, f|
      next unless f[:type] == "counter"

      expect(value(after, name)).to be >= value(during, name), name
    end
  ensure
    clients&.each(&:close)
  end

  it "reports the Redis links of a Redis-backed process" do
    redis = RedisServer.new.start
    other = AppServer.new(config: { redis_url: redis.url }).start
    client = SSEClient.open(other.port, "r:1")
    wait_until(message: "the links up") { other.stats[:redis_connected] }
    res = other.get("/metrics")
    expect(res.body).to match(/^spillway_redis_connected\{pid="\d+"\} 1$/)
    expect(res.body).to match(/^spillway_info\{pid="\d+",version="[^"]+",backend="redis"\} 1$/)
  ensure
    client&.close
    other&.stop
    redis&.cleanup
  end

  it "answers HEAD without a body and refuses other methods" do
    res = Net::HTTP.start("127.0.0.1", server.port) { |h| h.head("/metrics") }
    expect(res.code).to eq("200")
    expect(res.body.to_s).to eq("")
    res = Net::HTTP.start("127.0.0.1", server.port) { |h| h.post("/metrics", "") }
    expect(res.code).to eq("405")
    expect(res["allow"]).to eq("GET, HEAD")
  end
end
