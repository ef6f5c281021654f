# frozen_string_literal: true

require "spec_helper"
require "active_support"
require "active_support/notifications"

RSpec.describe "ActiveSupport::Notifications events" do
  include Waiting

  def capture(name)
    events = []
    sub = ActiveSupport::Notifications.subscribe(name) do |*args|
      events << ActiveSupport::Notifications::Event.new(*args)
    end
    yield
    events
  ensure
    ActiveSupport::Notifications.unsubscribe(sub)
  end

  it "instruments publish.spillway around every publish, on the publishing thread, exceptions included" do
    thread = nil
    events = capture("publish.spillway") do
      thread = Thread.current
      Spillway.publish("inst:a", "hello", event: "greeting", idempotency_key: "k1")
      expect { Spillway.publish("inst:a", "x" * (Spillway.config.max_message_bytes + 1)) }.to raise_error(ArgumentError)
    end
    expect(events.size).to eq(2)
    first = events.first.payload
    expect(first).to include(channel: "inst:a", event: "greeting", bytes: 13, async: false, idempotency_key: "k1")
    expect(first[:id]).to match(/\A\d+-\d+\z/)
    expect(events.last.payload[:exception].first).to eq("ArgumentError")
    expect(events.map { |e| e.payload[:id] }.compact.size).to eq(1)
    expect(thread).to eq(Thread.current)
  end

  # Collects the events named until the block returns true (on a deadline):
  # they come from the spillway-events thread.
  def collect(name)
    events = Queue.new
    sub = ActiveSupport::Notifications.subscribe(name) do |*args|
      events << [ActiveSupport::Notifications::Event.new(*args), Thread.current.name]
    end
    got = []
    yield(lambda do |timeout: 10, &cond|
      wait_until(timeout: timeout, message: "#{name} events") do
        got << events.pop until events.empty?
        cond.call(got)
      end
      got
    end)
  ensure
    ActiveSupport::Notifications.unsubscribe(sub)
  end

  def attach(query, cursor: nil, **options)
    mw = Spillway::Middleware.new(->(_) { [404, {}, []] }, **options)
    ours, theirs = UNIXSocket.pair
    env = { "PATH_INFO" => "/stream", "REQUEST_METHOD" => "GET", "QUERY_STRING" => query,
            "rack.hijack?" => true, "rack.hijack" => -> { theirs } }
    env["HTTP_LAST_EVENT_ID"] = cursor if cursor
    mw.call(env)
    ours
  end

  it "instruments stream_close.spillway with the reason, from the hub, on the spillway-events thread" do
    Spillway.hub # started with ActiveSupport loaded: the hub records its events
    collect("stream_close.spillway") do |wait|
      sock = attach("channel=ev:a&channel=ev:b")
      expect(sock.readpartial(4096)).to start_with("HTTP/1.1 200")
      sock.close
      got = wait.call { |g| g.any? { |e, _| e.payload[:channels] == %w[ev:a ev:b] } }
      event, thread = got.find { |e, _| e.payload[:channels] == %w[ev:a ev:b] }
      expect(event.payload).to include(reason: "client gone", channels: %w[ev:a ev:b])
      expect(event.payload[:stream]).to be_a(Integer).and be_positive
      expect(event.payload[:at]).to be_within(10).of(Time.now)
      expect(thread).to eq("spillway-events")
    end
  end

  it "instruments reset.spillway with the channels reset and why" do
    Spillway.hub
    collect("reset.spillway") do |wait|
      sock = attach("channel=ev:r", cursor: "1000-0")
      got = wait.call { |g| g.any? { |e, _| e.payload[:channels] == %w[ev:r] } }
      event, = got.find { |e, _| e.payload[:channels] == %w[ev:r] }
      expect(event.payload[:reason]).to eq("the Last-Event-ID is from before this process started")
      sock.close
    end
  end

  it "names a site's channels by their public names, with the site_id, in stream_open, reset and stream_close" do
    Spillway.hub
    opened = capture("stream_open.spillway") do
      collect("reset.spillway") do |wait|
        collect("stream_close.spillway") do |closed|
          sock = attach("channel=ev:s&channel=/global/ev", cursor: "1000-0", site_id: ->(_env) { "site-1" })
          got = wait.call { |g| g.any? { |e, _| e.payload[:site_id] == "site-1" } }
          event, = got.find { |e, _| e.payload[:site_id] == "site-1" }
          expect(event.payload[:channels]).to eq(%w[ev:s /global/ev])
          sock.close
          got = closed.call { |g| g.any? { |e, _| e.payload[:site_id] == "site-1" } }
          event, = got.find { |e, _| e.payload[:site_id] == "site-1" }
          expect(event.payload).to include(channels: %w[ev:s /global/ev], reason: "client gone")
        end
      end
    end
    expect(opened.map(&:payload)).to include(include(channels: %w[ev:s /global/ev], site_id: "site-1"))
    published = capture("publish.spillway") { Spillway.publish("ev:s", "x", site_id: "site-1") }
    expect(published.first.payload).to include(channel: "ev:s", site_id: "site-1")
  end

  it "instruments redis_error.spillway for every occurrence (the log sums them up)" do
    dead = TCPServer.new("127.0.0.1", 0)
    port = dead.addr[1]
    dead.close # nothing listens there: every connect is refused
    Spillway.configure(redis_url: "redis://127.0.0.1:#{port}/0", connect_timeout: 0.2)
    collect("redis_error.spillway") do |wait|
      Spillway.hub
      got = wait.call(timeout: 15) { |g| g.count { |e, _| e.payload[:kind] == "redis_connect" } >= 3 }
      event, = got.find { |e, _| e.payload[:kind] == "redis_connect" }
      expect(event.payload[:message]).to include("Connection refused")
    end
  end

  it "instruments stream_open.spillway once the stream is the hub's" do
    mw = Spillway::Middleware.new(->(_) { [404, {}, []] }, mount: "/s")
    ours, theirs = UNIXSocket.pair
    env = { "PATH_INFO" => "/s", "REQUEST_METHOD" => "GET", "QUERY_STRING" => "channel=inst:b&channel=inst:c",
            "HTTP_LAST_EVENT_ID" => "5-0", "rack.hijack?" => true, "rack.hijack" => -> { theirs } }
    events = capture("stream_open.spillway") { mw.call(env) }
    expect(events.map(&:payload)).to eq([{ channels: %w[inst:b inst:c], cursor: "5-0", mount: "/s" }])
    expect(ours.readpartial(4096)).to start_with("HTTP/1.1 200")
    # A refused request opens nothing and tells nobody.
    events = capture("stream_open.spillway") { mw.call(env.merge("QUERY_STRING" => "channel=bad%20name")) }
    expect(events).to eq([])
  ensure
    ours&.close
  end
end
