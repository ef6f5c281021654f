# frozen_string_literal: true

require "spec_helper"
require "active_support"
require "active_support/notifications"

RSpec.describe "ActiveSupport::Notifications events" do
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
