# frozen_string_literal: true

require "spec_helper"

# spillway.js (<mount>/client.js) in headless Chromium against a real Puma
# and a real Redis: the fixture's /client_page subscribes to ?channels= and
# records every message in window.got as [channel, data, id, event].
RSpec.describe "spillway.js, the browser client" do
  before(:all) do
    @redis = RedisServer.new.start
    @server = AppServer.new(config: { redis_url: @redis.url, heartbeat: 0.5, long_poll_timeout: 5 }).start
  end

  after(:all) do
    @browser&.quit
    @server&.stop
    @redis&.cleanup
  end

  after do
    @browser&.reset # pages closed, so no stream outlives its example
    wait_until(timeout: 15, message: "no stream left") { @server.stats[:connections].zero? } if @server
  end

  let(:server) { @server }

  def browser
    @browser ||= Browser.start
  end

  def open_page(channels, port: server.port, heartbeat: 0.5, extra: "")
    page = browser.create_page
    page.go_to("http://127.0.0.1:#{port}/client_page?channels=#{channels.join(',')}&heartbeat=#{heartbeat}#{extra}")
    page
  end

  def got(page)
    page.evaluate("window.got")
  end

  def diag(page)
    page.evaluate("bus.diagnostics()")
  end

  # Connected, and the hub has joined every channel of the stream.
  def wait_live(page, channels: nil, connections: 1)
    wait_until(timeout: 15, message: "the page streaming (#{diag(page).inspect})") do
      d = diag(page)
      d["status"] == "streaming" && (channels.nil? || d["streamChannels"] == channels.sort)
    end
    wait_until(timeout: 10, message: "#{connections} joined stream(s)") do
      s = server.stats
      s[:connections] == connections && s[:joining].zero?
    end
  end

  # The data of the messages of `channel` a page got.
  def data_of(page, channel)
    got(page).select { |m| m[0] == channel }.map { |m| m[1] }
  end

  describe "<mount>/client.js" do
    it "is served as JavaScript, cacheable, with a strong ETag from its digest and a 304 for the same copy" do
      res = server.get("/stream/client.js")
      expect(res.code).to eq("200")
      expect(res["content-type"]).to eq("text/javascript; charset=utf-8")
      expect(res["cache-control"]).to match(/\Apublic, max-age=\d+\z/)
      source = File.binread(File.join(AppServer::ROOT, "lib", "spillway", "client.js"))
      expect(res.body.b).to eq(source)
      expect(res["etag"]).to eq(%("#{Digest::SHA256.hexdigest(source)[0, 32]}"))
      expect(res["content-length"]).to eq(source.bytesize.to_s)

      again = server.get("/stream/client.js", "If-None-Match" => res["etag"])
      expect(again.code).to eq("304")
      expect(again.body.to_s).to eq("")
      expect(again["etag"]).to eq(res["etag"])
      listed = server.get("/stream/client.js", "If-None-Match" => %("other", W/#{res['etag']}))
      expect(listed.code).to eq("304")
      expect(server.get("/stream/client.js", "If-None-Match" => %("other")).code).to eq("200")
      head = server.http.start { |h| h.head("/stream/client.js") }
      expect(head.code).to eq("200")
      expect(head.body.to_s).to eq("")
      post = server.post("/stream/client.js")
      expect(post.code).to eq("405")
      # Only under the mount; the stream itself is unchanged.
      expect(server.get("/elsewhere/client.js").code).to eq("404")
      expect(server.get("/stream?channel=x&transport=poll").code).to eq("200")
    end
  end

  it "parses text/event-stream as a browser does: any line end, split anywhere, multi-line data, comments" do
    page = browser.create_page
    page.go_to("http://127.0.0.1:#{server.port}/client_page")
    frames = page.evaluate(<<~'JS')
      (() => {
        const out = [], retries = [];
        const p = new SpillwayClient.Parser(f => out.push(f), ms => retries.push(ms));
        const text = ": spillway\n\nretry: 1500\n\nid: 1-0\nchannel: a\ndata: x\ndata:y\n\n:\n\n" +
                     "id: 2-1\r\nevent: note\r\nchannel: b\r\ndata:  two\r\n\r\nid: 3-0\rdata\r\r" +
                     "id: 4-0\nno data\n\nid: 5-0\nevent: reset\ndata: {\"channels\":[\"a\"]}\n\n";
        for (let i = 0; i < text.length; i += 3) p.feed(text.slice(i, i + 3));
        return { out, retries };
      })()
    JS
    expect(frames["retries"]).to eq([1500])
    expect(frames["out"]).to eq([
      { "id" => "1-0", "event" => "message", "data" => "x\ny", "channel" => "a" },
      { "id" => "2-1", "event" => "note", "data" => " two", "channel" => "b" },
      { "id" => "3-0", "event" => "message", "data" => "", "channel" => nil },
      { "id" => "5-0", "event" => "reset", "data" => '{"channels":["a"]}', "channel" => nil }
    ])
  end

  it "shares one stream between a page's subscriptions, routes by channel, and follows subscribe/unsubscribe" do
    page = open_page(%w[cl:a cl:b])
    wait_live(page, channels: %w[cl:a cl:b])
    a1 = server.publish("cl:a", "a1")
    b1 = server.publish("cl:b", "b1", event: "note")
    server.publish("cl:other", "not for this page")
    a2 = server.publish("cl:a", "a2")
    wait_until(timeout: 10, message: "three messages") { got(page).size >= 3 }
    expect(got(page)).to eq([["cl:a", "a1", a1, "message"], ["cl:b", "b1", b1, "note"], ["cl:a", "a2", a2, "message"]])
    expect(server.stats[:connections]).to eq(1)
    expect(diag(page)).to include("leader" => true, "transport" => "stream", "lastId" => a2)

    # A second handler on cl:a, then cl:b dropped and cl:c added: one
    # reconnect from the last id, one stream again.
    page.evaluate("(window.second = [], bus.subscribe('cl:a', d => window.second.push(d)), bus.unsubscribe('cl:b'), " \
                  "bus.subscribe('cl:c', window.record), 1)")
    wait_live(page, channels: %w[cl:a cl:c])
    server.publish("cl:b", "b2")
    c1 = server.publish("cl:c", "c1")
    a3 = server.publish("cl:a", "a3")
    wait_until(timeout: 10, message: "c1 and a3") { got(page).size >= 5 }
    expect(got(page).drop(3)).to eq([["cl:c", "c1", c1, "message"], ["cl:a", "a3", a3, "message"]])
    expect(page.evaluate("window.second")).to eq(["a3"])
    # One handler of a channel removed: the other stays, the stream too.
    page.evaluate("(bus.unsubscribe('cl:a', window.record), 1)")
    server.publish("cl:a", "a4")
    wait_until(timeout: 10, message: "a4 to the remaining handler") { page.evaluate("window.second") == %w[a3 a4] }
    expect(data_of(page, "cl:a")).to eq(%w[a1 a2 a3])
    expect(diag(page)).to include("resubscribes" => 1, "reconnects" => 0)
    expect(server.stats[:connections]).to eq(1)

    # A resume from an older cursor (as a new leader whose last id lags a
    # broadcast still in flight) replays what was delivered: dropped by id,
    # per channel; what is new on a channel still arrives.
    page.evaluate("(bus.lastId = #{a1.to_json}, bus.subscribe('cl:d', window.record), 1)")
    wait_live(page, channels: %w[cl:a cl:c cl:d])
    d1 = server.publish("cl:d", "d1")
    wait_until(timeout: 10, message: "d1") { data_of(page, "cl:d") == ["d1"] }
    expect(got(page).drop(5)).to eq([["cl:d", "d1", d1, "message"]])
    expect(page.evaluate("window.second")).to eq(%w[a3 a4])

    # Nothing subscribed: no stream.
    page.evaluate("(['cl:a', 'cl:c', 'cl:d'].forEach(c => bus.unsubscribe(c)), 1)")
    wait_until(timeout: 10, message: "idle, no stream") { page.evaluate("bus.status()") == "idle" && server.stats[:connections].zero? }
  end

  it "serves every tab of a browser from one connection, and a follower takes over without a loss or a double" do
    tabs = [open_page(%w[mt:all mt:0]), open_page(%w[mt:all mt:1]), open_page(%w[mt:all mt:2])]
    leader = wait_until(timeout: 15, message: "one leader") do
      leaders = tabs.select { |t| diag(t)["leader"] }
      leaders.size == 1 && leaders.first
    end
    followers = tabs - [leader]
    wait_live(leader, channels: %w[mt:0 mt:1 mt:2 mt:all])
    followers.each { |t| expect(t.evaluate("bus.status()")).to eq("follower") }
    leader_tab = diag(leader)["tab"]
    wait_until(timeout: 10, message: "the followers know the leader") do
      followers.all? { |t| diag(t)["leaderTab"] == leader_tab && diag(t)["transport"] == "stream" }
    end

    server.post("/publish_seq?channel=mt:all&count=20&from=1")
    3.times { |i| server.publish("mt:#{i}", "own #{i}") }
    wait_until(timeout: 10, message: "every tab got its 21 messages") { tabs.all? { |t| got(t).size == 21 } }
    tabs.each_with_index do |t, i|
      expect(data_of(t, "mt:all")).to eq((1..20).map(&:to_s))
      expect(data_of(t, "mt:#{tabs.index(t)}")).to eq(["own #{i}"])
    end
    expect(server.stats[:connections]).to eq(1)

    # The leader goes while messages are published: a follower takes the
    # lock and resumes from the last id it saw.
    publisher = Thread.new do
      (21..80).each_slice(5) { |s| server.post("/publish_seq?channel=mt:all&count=#{s.size}&from=#{s.first}") }
    end
    leader.close
    publisher.join
    server.publish("mt:1", "after")
    server.publish("mt:2", "after")
    new_leader = wait_until(timeout: 15, message: "a new leader") { followers.find { |t| diag(t)["leader"] } }
    wait_until(timeout: 15, message: "every message in the remaining tabs") do
      followers.all? { |t| data_of(t, "mt:all").size >= 80 && data_of(t, "mt:#{tabs.index(t)}").size == 2 }
    end
    followers.each do |t|
      expect(data_of(t, "mt:all")).to eq((1..80).map(&:to_s)) # in order, none lost, none twice
      expect(data_of(t, "mt:#{tabs.index(t)}")).to eq(["own #{tabs.index(t)}", "after"])
      ids = got(t).map { |m| m[2] }
      expect(ids.uniq.size).to eq(ids.size)
    end
    wait_until(timeout: 10, message: "one connection again") { server.stats[:connections] == 1 }
    expect(diag(new_leader)["streamChannels"]).to eq(%w[mt:1 mt:2 mt:all])
    (followers - [new_leader]).each { |t| expect(t.evaluate("bus.status()")).to eq("follower") }
  end

  it "gets every message, in order, across an app-server restart" do
    page = open_page(%w[rs:a])
    wait_live(page)
    server.post("/publish_seq?channel=rs:a&count=10&from=1")
    wait_until(timeout: 10, message: "the first 10") { got(page).size == 10 }
    # Down: another process on the same Redis publishes meanwhile.
    server.stop
    other = AppServer.new(config: { redis_url: @redis.url }).start
    other.post("/publish_seq?channel=rs:a&count=10&from=11")
    wait_until(timeout: 10, message: "the client to notice") { diag(page)["status"] != "streaming" }
    server.start
    other.post("/publish_seq?channel=rs:a&count=10&from=21")
    wait_until(timeout: 30, message: "all 30 (#{diag(page).inspect})") { got(page).size >= 30 }
    expect(data_of(page, "rs:a")).to eq((1..30).map(&:to_s))
    expect(page.evaluate("window.resets")).to eq([])
    expect(diag(page)["reconnects"]).to be >= 1
  ensure
    other&.stop
  end

  it "reports a reset for the channels it names" do
    page = open_page(%w[rz:a rz:b])
    wait_live(page)
    first = server.publish("rz:a", "1")
    wait_until(timeout: 10, message: "the first") { got(page).size == 1 }
    @redis.call("FLUSHALL") # Redis lost its data: a resume from `first` cannot be proven
    page.evaluate("(bus.subscribe('rz:c', window.record), 1)") # reconnects from `first`
    wait_until(timeout: 15, message: "a reset (#{diag(page).inspect})") { page.evaluate("window.resets").any? }
    expect(page.evaluate("window.resets").flatten.sort - %w[rz:a rz:b rz:c]).to eq([])
    expect(diag(page)["lastId"]).not_to eq(first)
  end

  describe "behind a buffering nginx" do
    before(:all) { @nginx = Nginx.new(@server.port, buffered: true).start }
    after(:all) { @nginx&.stop }

    it "switches to long-poll when the stream stalls, tries the stream again later, and gets every message, in order" do
      page = open_page(%w[ng:a ng:b], port: @nginx.port, extra: "&stream_retry=1")
      wait_until(timeout: 20, message: "the switch to long-poll (#{diag(page).inspect})") do
        d = diag(page)
        d["transport"] == "long-poll" && d["stalls"] >= 1
      end
      expect(page.evaluate("bus.status()")).to eq("long-polling")
      (1..100).each_slice(10) do |s|
        server.post("/publish_seq?channel=ng:a&count=#{s.size}&from=#{s.first}")
        server.publish("ng:b", "b#{s.first}")
      end
      wait_until(timeout: 30, message: "110 messages (#{diag(page).inspect})") { got(page).size >= 110 }
      expect(data_of(page, "ng:a")).to eq((1..100).map(&:to_s))
      expect(data_of(page, "ng:b")).to eq((1..100).step(10).map { |i| "b#{i}" })
      ids = got(page).map { |m| m[2] }
      expect(ids).to eq(ids.sort_by { |id| id.split("-").map(&:to_i) })
      expect(ids.uniq).to eq(ids)
      # After stream_retry (1 s) of long-polls the stream is tried again,
      # and stalls again behind this proxy.
      wait_until(timeout: 15, message: "a second stall (#{diag(page).inspect})") { diag(page)["stalls"] >= 2 }
      last = server.publish("ng:b", "last")
      wait_until(timeout: 15, message: "the last one") { got(page).last&.at(2) == last }
      expect(got(page).size).to eq(111)
    end
  end
end
