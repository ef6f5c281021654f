# frozen_string_literal: true

require "spec_helper"

# The PostgreSQL backend against a real PostgreSQL (spec/support/postgres_server.rb)
# and a real Puma: publish and stream, resume, resets, big payloads, errors.
RSpec.describe "PostgreSQL backend", if: Spillway::Native::POSTGRES && PostgresServer.available? do
  before(:all) { @pg = PostgresServer.new.start }
  after(:all) { @pg&.cleanup }

  after do
    @server&.stop
    @pg.sql("DROP SCHEMA IF EXISTS spillway CASCADE") if @pg&.running?
  end

  def start_server(**config)
    @server = AppServer.new(config: { postgres_url: @pg.url, heartbeat: 2, connect_timeout: 0.5 }.merge(config)).start
    # The hub starts with the first stream.
    probe = SSEClient.open(@server.port, "probe")
    probe.wait_for_head
    wait_until(message: "LISTEN connection up") { @server.stats[:redis_connected] }
    probe.close
    wait_until(message: "probe gone") { @server.stats[:connections].zero? }
    Spillway.configure(postgres_url: @pg.url, connect_timeout: 0.5, command_timeout: 1, **config.slice(:backlog_size))
    @server
  end

  it "publishes from another process to a stream, with ids that resume" do
    server = start_server
    client = SSEClient.open(server.port, "news")
    client.wait_for_head
    wait_until(message: "stream attached") { server.stats[:connections] == 1 }
    ids = (1..5).map { |i| Spillway.publish("news", "m#{i}", event: "update") }
    expect(ids).to all(match(/\A\d+-\d+\z/))
    client.wait_for_events(5)
    expect(client.events.map(&:data)).to eq(%w[m1 m2 m3 m4 m5])
    expect(client.events.map(&:type)).to all(eq("update"))
    expect(client.events.map(&:last_event_id)).to eq(ids)
    expect(Spillway.last_id("news")).to eq(ids.last)

    # Resume from the second id: exactly 3..5, then live.
    resumed = SSEClient.open(server.port, "news", cursor: ids[1])
    resumed.wait_for_events(3)
    expect(resumed.events.map(&:data)).to eq(%w[m3 m4 m5])
    Spillway.publish("news", "m6")
    resumed.wait_for_events(4)
    expect(resumed.events.map(&:data)).to eq(%w[m3 m4 m5 m6])
    expect(server.stats[:resets]).to eq(0)
  ensure
    client&.close
    resumed&.close
  end

  it "merges several channels in id order on resume" do
    server = start_server
    cursor = Spillway.cursor
    sent = (1..6).map { |i| [i.odd? ? "a" : "b", "x#{i}"] }
    sent.each { |ch, d| Spillway.publish(ch, d) }
    client = SSEClient.open(server.port, %w[a b], cursor: cursor)
    client.wait_for_events(6)
    expect(client.events.map(&:data)).to eq(sent.map(&:last))
  ensure
    client&.close
  end

  it "sends an honest reset when the backlog was trimmed past the cursor" do
    server = start_server(backlog_size: 3)
    first = Spillway.publish("t", "1")
    (2..6).each { |i| Spillway.publish("t", i.to_s) }
    expect(@pg.sql("SELECT count(*) FROM spillway.messages WHERE channel = 't'")).to eq(["3"])
    client = SSEClient.open(server.port, "t", cursor: first)
    client.wait_for_events(1)
    expect(client.events.first.type).to eq("reset")
    expect(JSON.parse(client.events.first.data)["channels"]).to eq(["t"])
    # A cursor inside the backlog is served without a reset.
    inside = SSEClient.open(server.port, "t", cursor: @pg.sql("SELECT ms || '-' || n FROM spillway.messages " \
                                                              "WHERE channel = 't' ORDER BY n LIMIT 1").first)
    inside.wait_for_events(2)
    expect(inside.events.map(&:data)).to eq(%w[5 6])
  ensure
    client&.close
    inside&.close
  end

  it "sends a reset when the tables were truncated, and for a cursor from the future" do
    server = start_server
    first = Spillway.publish("tr", "1")
    Spillway.publish("tr", "2")
    @pg.sql("TRUNCATE spillway.messages")
    client = SSEClient.open(server.port, "tr", cursor: first)
    client.wait_for_events(1)
    expect(client.events.first.type).to eq("reset")
    future = SSEClient.open(server.port, "tr", cursor: "99999999999999-1")
    future.wait_for_events(1)
    expect(future.events.first.type).to eq("reset")
    Spillway.publish("tr", "3")
    future.wait_for_events(2)
    expect(future.events.last.data).to eq("3")
  ensure
    client&.close
    future&.close
  end

  it "delivers a message over NOTIFY's 8000-byte limit whole (the row is read), in order" do
    server = start_server
    client = SSEClient.open(server.port, "big")
    client.wait_for_head
    wait_until(message: "stream attached") { server.stats[:connections] == 1 }
    big = "é" * 20_000 # 40,000 bytes
    Spillway.publish("big", "before")
    Spillway.publish("big", big)
    Spillway.publish("big", "after")
    client.wait_for_events(3)
    expect(client.events.map { |e| e.data.force_encoding(Encoding::UTF_8) }).to eq(["before", big, "after"])
  ensure
    client&.close
  end

  it "serves Spillway.subscribe and Spillway.backlog in this process" do
    Spillway.configure(postgres_url: @pg.url)
    got = Queue.new
    # subscribe starts from Spillway.cursor: publishes right after it are not missed.
    Spillway.subscribe("sub") { |m| got << m.data }
    3.times { |i| Spillway.publish("sub", "s#{i}") }
    seen = []
    wait_until(message: "3 messages") { (seen << got.pop(true) rescue nil) && seen.size >= 3 }
    expect(seen).to eq(%w[s0 s1 s2])
    cursor = Spillway.cursor
    Spillway.publish("bk", "1")
    Spillway.publish("bk", "2")
    expect(Spillway.backlog("bk", since: cursor).map(&:data)).to eq(%w[1 2])
  end

  it "deduplicates a publish retried under the same idempotency key" do
    start_server
    a = Spillway.publish("k", "once", idempotency_key: "order-1")
    b = Spillway.publish("k", "once", idempotency_key: "order-1")
    expect(b).to eq(a)
    expect(@pg.sql("SELECT count(*) FROM spillway.messages WHERE channel = 'k'")).to eq(["1"])
  end

  it "refuses async publishes with a clear error" do
    start_server
    expect { Spillway.publish("x", "y", async: true) }.to raise_error(Spillway::Error, /not available with the PostgreSQL/)
  end

  it "fails clearly on a bad URL and on a dead server" do
    expect { Spillway.configure(postgres_url: "mysql://localhost/x") }.to raise_error(ArgumentError, /unsupported PostgreSQL URL/)
    Spillway.configure(postgres_url: "postgres://postgres@127.0.0.1:#{free_port}/postgres", connect_timeout: 0.3)
    expect { Spillway.publish("x", "y") }.to raise_error(Spillway::PostgresError, /cannot connect to PostgreSQL/)
    Spillway.configure(postgres_url: "postgres://postgres@127.0.0.1:#{@pg.port}/no_such_db", connect_timeout: 0.3)
    expect { Spillway.publish("x", "y") }.to raise_error(Spillway::PostgresError, /no_such_db/)
  end
end
