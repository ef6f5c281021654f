# frozen_string_literal: true

require "spec_helper"

# Targeted publishes (user_ids:, group_ids:, client_ids:) against streams
# whose identity comes from identify (and client_id=), matched in the native
# loop: live, in a resume and in a long-poll alike.
RSpec.shared_examples "targeting" do
  let(:server) { @server }

  def open(query, cursor: nil)
    SSEClient.open(server.port, "tg:room", cursor: cursor, query: query).tap(&:wait_for_head)
  end

  it "reaches only the streams whose identity matches, live and on resume, and everyone for untargeted" do
    alice = open("user=alice&groups=staff")
    bob = open("user=bob&groups=admins,staff")
    tab = open("user=bob&client_id=tab-2")
    anon = open("")
    wait_until(timeout: 10, message: "live") { s = server.stats; s[:connections] == 4 && s[:joining].zero? }
    first = server.publish("tg:room", "all")
    server.publish("tg:room", "for bob", user_ids: %w[bob])
    server.publish("tg:room", "admins", group_ids: %w[admins])
    server.publish("tg:room", "alice or admins", user_ids: %w[alice], group_ids: %w[admins])
    server.publish("tg:room", "bob's tab 2", user_ids: %w[bob], client_ids: %w[tab-2])
    server.publish("tg:room", "async for alice", user_ids: %w[alice], async: @async) if @async
    last = server.publish("tg:room", "all again")
    want = {
      alice => ["all", "alice or admins", *(@async ? ["async for alice"] : []), "all again"],
      bob => ["all", "for bob", "admins", "alice or admins", "all again"],
      tab => ["all", "for bob", "bob's tab 2", "all again"],
      anon => ["all", "all again"]
    }
    want.each do |c, data|
      c.wait_for_events(data.size)
      wait_until(timeout: 5, message: "the last one") { c.pump; c.events.last&.last_event_id == last }
      expect(c.data).to eq(data)
      expect(c.raw).not_to include("x-targets")
    end
    # A resume from before everything applies the same filter.
    again = open("user=bob&client_id=tab-2", cursor: first)
    again.wait_for_events(3)
    expect(again.data).to eq(["for bob", "bob's tab 2", "all again"])
    poll = SSEClient.open(server.port, "tg:room", cursor: first, query: "user=alice&transport=poll")
    poll.wait_closed
    expect(poll.data).to eq(["alice or admins", *(@async ? ["async for alice"] : []), "all again"])
  ensure
    [alice, bob, tab, anon, again].each { |c| c&.close }
  end

  it "refuses bad targets and identities with a clear answer" do
    res = server.post("/publish?channel=tg:x&user_ids=", "x")
    expect(res.code).to eq("422")
    expect(res.body).to include("ArgumentError")
    res = server.post("/publish?channel=tg:x&user_ids=#{URI.encode_www_form_component('a b')}", "x")
    expect(res.body).to include("is not 1 to 128 characters")
    expect(server.get("/stream?channel=tg:x&client_id=#{URI.encode_www_form_component('a;b')}").code).to eq("400")
    expect(server.get("/stream?channel=tg:x&identify=raise").code).to eq("500")
  end
end

RSpec.describe "Targeting (memory backend)" do
  before(:all) { @server = AppServer.new(middleware: { identify: "by_query" }).start }
  after(:all) { @server&.stop }

  include_examples "targeting"
end

RSpec.describe "Targeting (Redis backend)" do
  before(:all) do
    @async = true
    @redis = RedisServer.new.start
    @server = AppServer.new(config: { redis_url: @redis.url }, middleware: { identify: "by_query" }).start
  end

  after(:all) do
    @server&.stop
    @redis&.cleanup
  end

  include_examples "targeting"
end
