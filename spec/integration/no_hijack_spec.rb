# frozen_string_literal: true

require "spec_helper"
require "rack"

# A server with no hijack at all: the middleware answers with a streaming
# body that the server's thread iterates (real hub, real socket pair).
RSpec.describe "Servers without hijack" do
  it "streams through the body, counts the stream as a fallback and releases it when the body is closed" do
    app = Spillway::Middleware.new(->(_env) { [404, {}, []] })
    env = Rack::MockRequest.env_for("/stream?channel=plain")
    status, headers, body = app.call(env)
    expect(status).to eq(200)
    expect(headers["content-type"]).to eq("text/event-stream; charset=utf-8")
    expect(headers).not_to have_key("rack.hijack")

    parser = SSEParser.new
    reader = Thread.new do
      body.each do |chunk|
        parser.feed(chunk)
        break if parser.events.size >= 2
      end
    end
    wait_until { Spillway.stats[:fallback_streams] == 1 }
    id = Spillway.publish("plain", "one")
    Spillway.publish("plain", "two")
    reader.join(10)
    expect(parser.data).to eq(%w[one two])
    expect(parser.events.first.last_event_id).to eq(id)
    body.close
    wait_until { Spillway.stats[:connections].zero? && Spillway.stats[:fallback_streams].zero? }
  end
end
