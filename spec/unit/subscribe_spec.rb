# frozen_string_literal: true

require "spec_helper"
require "logger"
require "stringio"

# Server-side subscribe (issue 12, item 4) on the memory backend: the
# subscription is a stream of this process's hub, read by the subscriber
# thread.
RSpec.describe "Spillway.subscribe, backlog and last_id (memory backend)" do
  let(:log) { StringIO.new }

  before { Spillway.configure(logger: Logger.new(log), heartbeat: 1) }

  def collector
    got = []
    lock = Mutex.new
    [got, lock, ->(m) { lock.synchronize { got << m } }]
  end

  # Queue#pop(timeout:) is Ruby 3.2.
  def pop(queue)
    wait_until(message: "an entry in the queue") { !queue.empty? }
    queue.pop
  end

  def live!(count)
    wait_until(message: "#{count} hub connections") { Spillway.stats[:connections] == count }
  end

  it "delivers every message published after it subscribed, in order, with the publish ids" do
    Spillway.publish("orders", "before")
    got, lock, push = collector
    sub = Spillway.subscribe("orders", &push)
    expect(sub).to be_a(Spillway::Subscription)
    # No wait for the stream: "from now on" is Spillway.cursor at the call.
    ids = Array.new(200) { |i| Spillway.publish("orders", "m#{i}", event: i.even? ? "even" : nil) }
    Spillway.publish("other", "not for us")
    wait_until(message: "200 messages") { lock.synchronize { got.size >= 200 } }
    expect(got.map(&:data)).to eq(Array.new(200) { |i| "m#{i}" })
    expect(got.map(&:id)).to eq(ids)
    expect(got.map(&:channel).uniq).to eq(["orders"])
    expect(got.map(&:event).first(2)).to eq(["even", nil])
    expect(got.first.data.encoding).to eq(Encoding::UTF_8)
    expect(sub.last_id).to eq(ids.last)
    expect(Spillway.stats[:connections]).to eq(1)
  end

  it "keeps multi-line and UTF-8 data as published" do
    got, lock, push = collector
    Spillway.subscribe("orders", &push)
    Spillway.publish("orders", "a\nb\n\nc")
    Spillway.publish("orders", "")
    Spillway.publish("orders", { "k" => "ünï" })
    wait_until { lock.synchronize { got.size == 3 } }
    expect(got.map(&:data)).to eq(["a\nb\n\nc", "", '{"k":"ünï"}'])
  end

  it "replays exactly what followed last_id, then goes live" do
    ids = Array.new(10) { |i| Spillway.publish("orders", "m#{i}") }
    got, lock, push = collector
    Spillway.subscribe("orders", last_id: ids[3], &push)
    wait_until { lock.synchronize { got.size == 6 } }
    later = Spillway.publish("orders", "m10")
    wait_until { lock.synchronize { got.size == 7 } }
    expect(got.map(&:id)).to eq(ids[4..] + [later])
    expect(got.map(&:data)).to eq((4..10).map { |i| "m#{i}" })
  end

  it "logs an exception in the block and goes on with the next messages" do
    got, lock, push = collector
    Spillway.subscribe("orders") do |m|
      raise ArgumentError, "bad #{m.data}" if m.data == "2"

      push.call(m)
    end
    %w[1 2 3].each { |d| Spillway.publish("orders", d) }
    wait_until { lock.synchronize { got.size == 2 } }
    expect(got.map(&:data)).to eq(%w[1 3])
    expect(log.string).to match(/Spillway\.subscribe: the block for orders raised ArgumentError: bad 2 .*goes on/)
  end

  it "stops delivery on unsubscribe and frees the hub's connection" do
    got, lock, push = collector
    keep, = collector
    sub = Spillway.subscribe("orders", &push)
    other = Spillway.subscribe("orders") { |m| keep << m }
    live!(2)
    Spillway.publish("orders", "1")
    wait_until { lock.synchronize { got.size == 1 } && keep.size == 1 }
    expect(sub.unsubscribe).to be_nil
    expect(sub.active?).to be(false)
    live!(1)
    Spillway.publish("orders", "2")
    wait_until { keep.size == 2 }
    expect(got.map(&:data)).to eq(["1"])
    sub.unsubscribe # twice is fine
    other.unsubscribe
    live!(0)
  end

  it "can unsubscribe from its own block" do
    got, lock, push = collector
    sub = Spillway.subscribe("orders") do |m|
      push.call(m)
      sub.unsubscribe if m.data == "2"
    end
    %w[1 2 3 4].each { |d| Spillway.publish("orders", d) }
    wait_until { lock.synchronize { got.size == 2 } }
    live!(0)
    expect(got.map(&:data)).to eq(%w[1 2])
  end

  it "hands a cursor the backlog no longer reaches to on_reset, and goes on from the reset's id" do
    Spillway.configure(backlog_size: 3)
    ids = Array.new(10) { |i| Spillway.publish("orders", "m#{i}") }
    resets = Queue.new
    got, lock, push = collector
    sub = Spillway.subscribe("orders", last_id: ids[1], on_reset: ->(r) { resets << r }, &push)
    reset = pop(resets)
    expect(reset).to be_a(Spillway::Reset)
    expect(reset).to be_reset
    expect(reset.channel).to eq("orders")
    expect(reset.id).to eq(ids.last)
    expect(sub.last_id).to eq(ids.last)
    after = Spillway.publish("orders", "after")
    wait_until { lock.synchronize { got.size == 1 } }
    expect(got.map(&:id)).to eq([after]) # nothing of the lost part, nothing twice
  end

  it "logs a reset when there is no on_reset" do
    Spillway.configure(backlog_size: 2)
    ids = Array.new(5) { |i| Spillway.publish("orders", "m#{i}") }
    Spillway.subscribe("orders", last_id: ids[0]) { nil }
    wait_until { log.string.include?("Spillway.subscribe: orders: reset") }
    expect(log.string).to include("going on from #{ids.last}")
  end

  it "tells a message whose event is named reset from a reset" do
    got, lock, push = collector
    resets = Queue.new
    Spillway.subscribe("orders", on_reset: ->(r) { resets << r }, &push)
    Spillway.publish("orders", "not a reset", event: "reset")
    wait_until { lock.synchronize { got.size == 1 } }
    expect(got.first.event).to eq("reset")
    expect(got.first).not_to be_reset
    expect(resets).to be_empty
  end

  it "opens its stream again when the hub restarts (Spillway.configure) and tells of the lost backlog" do
    got, lock, push = collector
    resets = Queue.new
    Spillway.subscribe("orders", on_reset: ->(r) { resets << r }, &push)
    live!(1)
    Spillway.publish("orders", "1")
    wait_until { lock.synchronize { got.size == 1 } }
    Spillway.configure(heartbeat: 2) # a new memory hub: the old backlog is gone
    expect(pop(resets)).to be_a(Spillway::Reset)
    live!(1)
    id = Spillway.publish("orders", "2")
    wait_until { lock.synchronize { got.size == 2 } }
    expect(got.last.id).to eq(id)
  end

  it "ends every subscription on Spillway.shutdown, and does not start the hub again" do
    sub = Spillway.subscribe("orders") { nil }
    live!(1)
    Spillway.shutdown
    expect(sub.active?).to be(false)
    expect(Spillway.stats[:running]).to be(false)
    expect(Spillway::Subscriber.count).to eq(0)
  end

  it "survives a block too slow for the hub: the stream is dropped, opened again from the last id, nothing lost" do
    Spillway.configure(max_lag: 1, backlog_size: 2000)
    gate = Queue.new
    got, lock, push = collector
    Spillway.subscribe("orders") do |m|
      gate.pop if m.data.start_with?("0:") # stuck on the first message
      push.call(m)
    end
    live!(1)
    ids = Array.new(400) { |i| Spillway.publish("orders", "#{i}:" + ("x" * 4000)) }
    wait_until(message: "the hub drops the stalled stream") { Spillway.stats[:dropped_slow] >= 1 }
    gate << :go
    wait_until(timeout: 20, message: "400 messages") { lock.synchronize { got.size >= 400 } }
    expect(got.map(&:id)).to eq(ids)
    live!(1)
  end

  it "belongs to the process that made it: a fork child has none and keeps no copy of its socket" do
    got, lock, push = collector
    seen_inside = nil
    sub = Spillway.subscribe("orders") do |m|
      seen_inside = sub.last_id
      push.call(m)
    end
    live!(1)
    r, w = IO.pipe
    done_r, done_w = IO.pipe
    pid = fork do
      r.close
      done_w.close
      w.puts([Spillway::Subscriber.count, sub.active?, sub.unsubscribe.inspect].join(","))
      w.close
      done_r.read # stays alive until the parent is done
      exit!(0)
    end
    w.close
    done_r.close
    expect(r.read.chomp).to eq("0,false,nil")
    id = Spillway.publish("orders", "after fork")
    wait_until { lock.synchronize { got.size == 1 } }
    expect(got.first.id).to eq(id)
    expect(seen_inside).to eq(id)
    # The child still lives: the hub sees the end close all the same.
    sub.unsubscribe
    live!(0)
  ensure
    done_w&.close
    Process.wait(pid) if pid
  end

  it "is counted in stats[:connections] and against max_connections" do
    Spillway.configure(max_connections: 2)
    subs = Array.new(3) { Spillway.subscribe("orders") { nil } }
    live!(2)
    wait_until { log.string.include?("cannot open the stream of orders") }
    subs.first.unsubscribe
    live!(2) # the third one got the place
    subs.each(&:unsubscribe)
    live!(0)
  end

  describe "Spillway.backlog and Spillway.last_id" do
    it "returns the messages after since, oldest first, and the channel's newest id" do
      expect(Spillway.last_id("orders")).to be_nil
      ids = Array.new(5) { |i| Spillway.publish("orders", "m#{i}", event: "e") }
      Spillway.publish("other", "x")
      msgs = Spillway.backlog("orders", since: ids[1])
      expect(msgs.map(&:id)).to eq(ids[2..])
      expect(msgs.map(&:data)).to eq(%w[m2 m3 m4])
      expect(msgs.map(&:event).uniq).to eq(["e"])
      expect(Spillway.backlog("orders", since: ids.last)).to eq([])
      expect(Spillway.last_id("orders")).to eq(ids.last)
      expect(Spillway.last_id(:orders)).to eq(ids.last)
      expect(Spillway.stats[:connections]).to eq(0) # one answer each, closed
    end

    it "reads a backlog over the 1 MiB answer cap in several answers" do
      Spillway.configure(backlog_size: 100)
      start = Spillway.cursor
      ids = Array.new(60) { |i| Spillway.publish("big", "#{i}:" + ("x" * 60_000)) }
      polls = Spillway.stats[:polls_answered]
      msgs = Spillway.backlog("big", since: start)
      expect(msgs.map(&:id)).to eq(ids)
      expect(msgs.map { |m| m.data.split(":").first }).to eq((0...60).map(&:to_s))
      expect(Spillway.stats[:polls_answered] - polls).to be >= 4 # 3.6 MB in 1 MiB answers
    end

    it "raises Spillway::ResetError when the backlog no longer reaches back to since" do
      Spillway.configure(backlog_size: 2)
      ids = Array.new(5) { Spillway.publish("orders", "x") }
      expect { Spillway.backlog("orders", since: ids[0]) }.to raise_error(Spillway::ResetError) { |e|
        expect(e.id).to eq(ids.last)
        expect(e.channel).to eq("orders")
      }
      expect(Spillway.backlog("orders", since: ids[2]).map(&:id)).to eq(ids[3..])
    end
  end

  describe "bad input" do
    it "refuses bad channel names, ids, a missing block and an on_reset that cannot be called" do
      Spillway.configure(max_channel_length: 8)
      ok = -> {}
      expect { Spillway.subscribe("bad name", &ok) }.to raise_error(ArgumentError, /invalid channel name/)
      expect { Spillway.subscribe("", &ok) }.to raise_error(ArgumentError, /invalid channel name/)
      expect { Spillway.subscribe("toolongname", &ok) }.to raise_error(ArgumentError, /max_channel_length/)
      expect { Spillway.subscribe(nil, &ok) }.to raise_error(ArgumentError, /invalid channel name/)
      expect { Spillway.subscribe(["a"], &ok) }.to raise_error(ArgumentError, /invalid channel name/)
      expect { Spillway.subscribe("orders") }.to raise_error(ArgumentError, /needs a block/)
      expect { Spillway.subscribe("orders", last_id: "abc", &ok) }.to raise_error(ArgumentError, /invalid last_id/)
      expect { Spillway.subscribe("orders", last_id: 12, &ok) }.to raise_error(ArgumentError, /invalid last_id/)
      expect { Spillway.subscribe("orders", last_id: "1-2\n", &ok) }.to raise_error(ArgumentError, /invalid last_id/)
      expect { Spillway.subscribe("orders", on_reset: 1, &ok) }.to raise_error(ArgumentError, /on_reset/)
      expect { Spillway.backlog("bad name", since: "1-0") }.to raise_error(ArgumentError, /invalid channel name/)
      expect { Spillway.backlog("orders", since: nil) }.to raise_error(ArgumentError, /since/)
      expect { Spillway.backlog("orders", since: "1-x") }.to raise_error(ArgumentError, /invalid since/)
      expect { Spillway.backlog("orders") }.to raise_error(ArgumentError, /since/)
      expect { Spillway.last_id("a b") }.to raise_error(ArgumentError, /invalid channel name/)
      expect(Spillway::Subscriber.count).to eq(0)
      expect(Spillway.stats[:connections]).to eq(0)
    end
  end

  describe Spillway::SSEReader do
    def frames(*chunks)
      reader = Spillway::SSEReader.new(100)
      out = []
      chunks.each { |c| reader.feed(c.b) { |f| out << f.to_a } }
      out
    end

    it "reads frames split anywhere, skips comments and frames without data" do
      text = ": spillway\n\nretry: 2000\n\nid: 1-0\nchannel: c\nevent: e\ndata: a\ndata:\ndata: b\n\n:\n\nid: 1-1\nevent: reset\ndata: {}\n\n"
      expected = [["1-0", "e", "c", "a\n\nb"], ["1-1", "reset", nil, "{}"]]
      expect(frames(text)).to eq(expected)
      expect(frames(*text.chars)).to eq(expected)
    end

    it "refuses what the hub never writes" do
      expect { frames("bogus: 1\n") }.to raise_error(Spillway::SSEReader::ProtocolError, /unknown field/)
      expect { frames("data: a\r\n") }.to raise_error(Spillway::SSEReader::ProtocolError, /CR/)
      expect { frames("data: #{'x' * 200}") }.to raise_error(Spillway::SSEReader::ProtocolError, /more than 100 bytes/)
    end
  end
end
