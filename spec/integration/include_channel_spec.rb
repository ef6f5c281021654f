# frozen_string_literal: true

require "spec_helper"

# include=channel: every message names its channel in a `channel:` line,
# live, replayed from the backlog and in long-poll answers; streams that did
# not ask get the frames untouched.
RSpec.shared_examples "include=channel" do
  let(:server) { @server }

  def channels_of(client)
    client.raw.scan(/^id: ([^\n]+)\nchannel: ([^\n]+)\n/).map { |id, ch| [ch, id] }
  end

  it "names the channel of every live and replayed message, and only for the streams that asked" do
    tagged = SSEClient.open(server.port, %w[ic:a ic:b], query: "include=channel")
    plain = SSEClient.open(server.port, %w[ic:a ic:b])
    [tagged, plain].each(&:wait_for_head)
    wait_until(timeout: 10, message: "live") { s = server.stats; s[:connections] >= 2 && s[:joining].zero? }
    a = server.publish("ic:a", "1")
    b = server.publish("ic:b", "2", event: "note")
    tagged.wait_for_events(2)
    plain.wait_for_events(2)
    expect(channels_of(tagged)).to eq([["ic:a", a], ["ic:b", b]])
    expect(tagged.events.map { |e| [e.type, e.data, e.last_event_id] }).to eq([["message", "1", a], ["note", "2", b]])
    expect(plain.raw).not_to include("channel:")
    # Resumed from before both (a stream's own read, or the resume cache).
    resumed = SSEClient.open(server.port, %w[ic:a ic:b], cursor: a, query: "include=channel")
    resumed.wait_for_events(1)
    expect(channels_of(resumed)).to eq([["ic:b", b]])
    lp = SSEClient.open(server.port, %w[ic:a ic:b], cursor: a, query: "include=channel&transport=poll")
    lp.wait_closed
    expect(channels_of(lp)).to eq([["ic:b", b]])
    expect(server.get("/stream?channel=ic:a&include=everything").code).to eq("400")
  ensure
    [tagged, plain, resumed].each { |c| c&.close }
  end
end

RSpec.describe "include=channel (memory backend)" do
  before(:all) { @server = AppServer.new.start }
  after(:all) { @server&.stop }

  include_examples "include=channel"
end

RSpec.describe "include=channel (Redis backend)" do
  before(:all) do
    @redis = RedisServer.new.start
    @server = AppServer.new(config: { redis_url: @redis.url }).start
  end

  after(:all) do
    @server&.stop
    @redis&.cleanup
  end

  include_examples "include=channel"
end
