# frozen_string_literal: true

require "spec_helper"

RSpec.describe "Spillway.publish with an idempotency_key (memory backend)" do
  it "returns the first id for a repeat within idempotency_ttl and publishes nothing" do
    first = Spillway.publish("idem", "shipped", idempotency_key: "order-42-shipped")
    cursor = Spillway.cursor
    expect(Spillway.publish("idem", "shipped", idempotency_key: "order-42-shipped")).to eq(first)
    expect(Spillway.publish("other", "shipped again", idempotency_key: "order-42-shipped")).to eq(first)
    # No id was issued: the memory backend stamps every publish it hands to
    # the hub under the queue lock, so nothing went there. (The hub's own
    # count, messages_in, is kept by its thread and lags: comparing it here
    # raced with the first publish being taken.)
    expect(Spillway.cursor).to eq(cursor)
    expect(Spillway.publish("idem", "shipped", idempotency_key: "order-43-shipped")).not_to eq(first)
  end

  it "publishes a key once when threads race with it" do
    ids = Queue.new
    8.times.map { Thread.new { 20.times { |i| ids << Spillway.publish("race", "x", idempotency_key: "k#{i}") } } }.each(&:join)
    by_key = ids.size.times.map { ids.pop }.tally
    expect(by_key.size).to eq(20)
    expect(by_key.values.uniq).to eq([8])
  end

  it "frees a key after idempotency_ttl" do
    Spillway.configure(idempotency_ttl: 0.2)
    first = Spillway.publish("idem", "1", idempotency_key: "short")
    expect(Spillway.publish("idem", "1", idempotency_key: "short")).to eq(first)
    second = wait_until(message: "the key to expire") do
      id = Spillway.publish("idem", "2", idempotency_key: "short")
      id != first && id
    end
    expect(second.split("-").map(&:to_i) <=> first.split("-").map(&:to_i)).to eq(1)
  end

  it "refuses a bad key with an ArgumentError that names the rule, and publishes nothing" do
    before = Spillway.stats[:published]
    ["", "a\nb", "a\rb", "a\0b", "x" * 257, :sym, 42].each do |bad|
      expect { Spillway.publish("idem", "x", idempotency_key: bad) }
        .to raise_error(ArgumentError, /invalid idempotency_key .*1 to 256 bytes, no CR, LF or NUL/)
    end
    expect(Spillway.stats[:published]).to eq(before)
    expect(Spillway.publish("idem", "x", idempotency_key: "é" * 128)).to match(/\A\d+-\d+\z/) # 256 bytes
  end

  it "validates idempotency_ttl" do
    expect(Spillway::Configuration.new.idempotency_ttl).to eq(300)
    expect { Spillway::Configuration.new(idempotency_ttl: 0) }.to raise_error(ArgumentError, /idempotency_ttl must be between/)
    expect { Spillway::Configuration.new(idempotency_ttl: 31 * 86_400) }.to raise_error(ArgumentError, /idempotency_ttl/)
    expect(Spillway::Configuration.new(redis_url: "redis://h:1", idempotency_ttl: 2.5).native_options)
      .to include(idempotency_ttl_ms: 2500)
  end
end

RSpec.describe Spillway::IdempotencyCache do
  it "keeps at most max keys, dropping the oldest, and expires by ttl" do
    cache = described_class.new(60, max: 3)
    ids = %w[a b c d].map { |k| cache.fetch(k) { "id-#{k}" } }
    expect(ids).to eq(%w[id-a id-b id-c id-d])
    expect(cache.size).to eq(3)
    expect(cache.evicted).to eq(1)
    expect(cache.fetch("b") { "new" }).to eq("id-b")
    expect(cache.fetch("a") { "id-a2" }).to eq("id-a2") # evicted: published again

    short = described_class.new(0.05)
    short.fetch("x") { 1 }
    wait_until(message: "expiry") { short.fetch("x") { 2 } == 2 }
    expect(short.size).to eq(1)
  end

  it "stores nothing when the publish raises" do
    cache = described_class.new(60)
    expect { cache.fetch("k") { raise Spillway::QueueFull, "full" } }.to raise_error(Spillway::QueueFull)
    expect(cache.fetch("k") { "id" }).to eq("id")
  end
end

RSpec.describe "A repeated idempotency_key on a stream (memory backend, Puma)" do
  it "delivers the message once and gives the first id back" do
    server = AppServer.new.start
    client = SSEClient.open(server.port, "idem")
    client.wait_for_head
    first = server.publish("idem", "once", idempotency_key: "k-1")
    expect(server.publish("idem", "once", idempotency_key: "k-1")).to eq(first)
    server.publish("idem", "next")
    wait_until(message: "the next message") do
      client.pump
      client.data.include?("next")
    end
    expect(client.events.map { |e| [e.data, e.last_event_id] }.first).to eq(["once", first])
    expect(client.data).to eq(%w[once next])
  ensure
    client&.close
    server&.stop
  end
end
