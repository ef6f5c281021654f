# frozen_string_literal: true

require "spec_helper"

RSpec.describe "Spillway.publish (memory backend)" do
  it "returns strictly increasing ids" do
    ids = Array.new(1000) { Spillway.publish("ids", "x") }
    parsed = ids.map { |id| id.split("-").map(&:to_i) }
    expect(parsed).to eq(parsed.sort)
    expect(parsed.uniq.size).to eq(1000)
  end

  it "keeps ids in order across threads" do
    before = Spillway.stats[:published]
    ids = Queue.new
    4.times.map { Thread.new { 250.times { ids << Spillway.publish("threads", "x") } } }.each(&:join)
    expect(ids.size).to eq(1000)
    expect(Spillway.stats[:published] - before).to eq(1000)
  end

  it "refuses bad input with ArgumentError naming the rule or the limit" do
    Spillway.configure(max_message_bytes: 10, max_channel_length: 5)
    before = Spillway.stats[:published]
    expect { Spillway.publish("ok", "x" * 11) }.to raise_error(ArgumentError, /max_message_bytes \(10\)/)
    expect { Spillway.publish("toolong", "x") }.to raise_error(ArgumentError, /max_channel_length/)
    expect { Spillway.publish("ok", "x", event: "a\rb") }.to raise_error(ArgumentError, /invalid event name/)
    expect { Spillway.publish("ok", "x", event: "") }.to raise_error(ArgumentError, /invalid event name/)
    expect { Spillway.publish("ok", 42) }.to raise_error(ArgumentError, /must be a String/)
    expect { Spillway.publish("ok", "\xc3".b) }.to raise_error(ArgumentError, /not valid UTF-8/)
    expect(Spillway.publish(:ok, { a: 1 })).to match(/\A\d+-\d+\z/)
    expect(Spillway.stats[:published] - before).to eq(1)
  end

  it "does not start a hub for stats" do
    expect(Spillway.stats).to include(running: false, connections: 0, backend: :memory)
    expect(Spillway.stats[:running]).to be(false)
  end

  it "reports the hub's memory through ObjectSpace.memsize_of" do
    require "objspace"
    hub = Spillway.hub
    expect(ObjectSpace.memsize_of(hub)).to be > 1000
  end
end

RSpec.describe "Spillway::Native.sse_encode" do
  def enc(id, event, data)
    Spillway::Native.sse_encode(id, event, data)
  end

  it "encodes id, event and data lines" do
    expect(enc("1-0", "ev", "a")).to eq("id: 1-0\nevent: ev\ndata: a\n\n")
    expect(enc(nil, nil, "")).to eq("data: \n\n")
    expect(enc(nil, nil, "a\r\nb\rc\nd\n")).to eq("data: a\ndata: b\ndata: c\ndata: d\ndata: \n\n")
  end

  it "rejects CR, LF and NUL in ids and event names" do
    ["a\nb", "a\rb", "a\0b"].each do |bad|
      expect { enc(bad, nil, "x") }.to raise_error(ArgumentError, /id contains/)
      expect { enc(nil, bad, "x") }.to raise_error(ArgumentError, /event name contains/)
    end
  end

  it "round-trips random data through a browser-style parser" do
    rng = Random.new(42)
    alphabet = ["a", "b", " ", ":", "\r", "\n", "\r\n", "é", "\0", "data: "]
    500.times do
      data = Array.new(rng.rand(0..12)) { alphabet[rng.rand(alphabet.size)] }.join
      parser = SSEParser.new
      frame = enc("7-1", "t", data)
      frame.bytes.each_slice(rng.rand(1..5)) { |s| parser.feed(s.pack("C*")) }
      event = parser.events.first
      expect(event.data).to eq(data.gsub(/\r\n|\r/, "\n")), data.inspect
      expect(event.type).to eq("t")
      expect(event.last_event_id).to eq("7-1")
    end
  end
end

RSpec.describe "Spillway.cursor" do
  it "is the newest id (memory), a clean start for a stream before or after publishes" do
    first = Spillway.cursor
    expect(first).to match(/\A\d+-\d+\z/)
    id = Spillway.publish("cur", "x")
    expect(Spillway.cursor).to eq(id)
  end

  it "warns once when a forked child publishes with the memory backend" do
    log = StringIO.new
    Spillway.configure(logger: Logger.new(log))
    reader, writer = IO.pipe
    pid = fork do
      reader.close
      2.times { Spillway.publish("forked", "x") }
      writer.write(log.string)
      exit!(0)
    end
    writer.close
    out = reader.read
    Process.wait(pid)
    expect(out.scan("forked process").size).to eq(1)
    expect(out).to include("Configure redis_url")
  end
end

RSpec.describe "Spillway.busiest_channels" do
  def attach(query)
    mw = Spillway::Middleware.new(->(_) { [404, {}, []] })
    ours, theirs = UNIXSocket.pair
    mw.call({ "PATH_INFO" => "/stream", "REQUEST_METHOD" => "GET", "QUERY_STRING" => query,
              "rack.hijack?" => true, "rack.hijack" => -> { theirs } })
    expect(ours.readpartial(4096)).to start_with("HTTP/1.1 200")
    ours
  end

  it "starts nothing, and lists this process's channels by deliveries per second" do
    expect(Spillway.busiest_channels).to eq([])
    expect(Spillway.stats[:running]).to be(false)
    socks = [attach("channel=bz:hot&channel=bz:cold"), attach("channel=bz:hot"), attach("channel=bz:cold")]
    3.times { socks << attach("channel=bz:crowd") }
    wait_until(timeout: 5, message: "6 streams") { Spillway.stats[:connections] == 6 }
    5.times { Spillway.publish("bz:hot", "x") }
    Spillway.publish("bz:cold", "x")
    Spillway.publish("bz:nobody", "x")
    got = nil
    wait_until(timeout: 5, message: "the publishes counted") do
      got = Spillway.busiest_channels(10)
      # The loop takes the publishes in order: the last one counted means all are.
      got.find { |c| c[:name] == "bz:hot" }&.fetch(:messages) == 5 && got.any? { |c| c[:name] == "bz:nobody" }
    end
    expect(got.map { |c| c[:name] }).to eq(%w[bz:hot bz:cold bz:nobody bz:crowd])
    hot = got.first
    expect(hot).to include(subscribers: 2, messages: 5)
    expect(hot[:messages_per_s]).to be > 0
    expect(hot[:deliveries_per_s]).to be_within(1e-9).of(hot[:messages_per_s] * 2)
    expect(got.last).to include(name: "bz:crowd", subscribers: 3, messages: 0, messages_per_s: 0.0)
    expect(Spillway.busiest_channels(2).map { |c| c[:name] }).to eq(%w[bz:hot bz:cold])
    expect { Spillway.busiest_channels(101) }.to raise_error(ArgumentError, /0\.\.100/)
  ensure
    socks&.each(&:close)
  end
end
