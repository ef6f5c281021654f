# frozen_string_literal: true

require "spec_helper"

# Multisite (Spillway::Site): the fixture's middleware takes a stream's site
# from `site=`, and its publishes take theirs from the same parameter (the
# configured site_id). Two sites on one channel name never see each other's
# messages, backlogs or resets; "/global/" channels reach both; clients see
# public names only. @streams serves the streams, @pub publishes (the same
# Puma for the memory backend, another one over Redis).
MULTISITE_SECRET = "m" * 48

RSpec.shared_examples "multisite" do
  before { Spillway.configure(secret: MULTISITE_SECRET) }

  def open(channels, site, cursor: nil, query: nil, server: @streams)
    q = [("site=#{site}" if site), query].compact.join("&")
    SSEClient.open(server.port, channels, cursor: cursor, query: q.empty? ? nil : q).tap(&:wait_for_head)
  end

  def live!(count, server = @streams)
    wait_until(timeout: 10, message: "#{count} streams live") do
      s = server.stats
      s[:connections] == count && s[:joining].zero? && (s[:backend] == "memory" || s[:redis_connected])
    end
  end

  def wait_data(client, want)
    wait_until(timeout: 10, message: "#{want.inspect} (have #{client.data.inspect})") do
      client.pump
      client.data.size >= want.size
    end
    expect(client.data).to eq(want)
  end

  def channels_of(client)
    client.raw.scan(/^id: [^\n]+\nchannel: ([^\n]+)\n/).flatten
  end

  after do
    [@streams, @pub].uniq.each do |s|
      wait_until(message: "no stream left") { s.stats[:connections].zero? }
    end
  end

  it "keeps two sites apart on one channel name, reaches both on /global/, and names public channels" do
    c0 = @pub.publish("ms:warm", "-")
    a = open(["ms:chat", "/global/news"], "a", query: "include=channel")
    b = open(["ms:chat", "/global/news"], "b", query: "include=channel")
    b2 = open("ms:chat", "b", server: @pub) unless @pub.equal?(@streams)
    none = open(["ms:chat", "/global/news"], nil)
    live!(3)
    live!(1, @pub) if b2
    @pub.publish("ms:chat", "A1", site: "a")
    @streams.publish("ms:chat", "B1", site: "b")
    @pub.publish("/global/news", "G", site: "a")
    @pub.publish("ms:chat", "N")
    @pub.publish("ms:chat", "A2", site: "a")
    @pub.publish("ms:chat", "B2", site: "b")
    wait_data(a, %w[A1 G A2])
    wait_data(b, %w[B1 G B2])
    wait_data(b2, %w[B1 B2]) if b2
    wait_data(none, %w[G N])
    expect(channels_of(a)).to eq(["ms:chat", "/global/news", "ms:chat"])
    expect(channels_of(b)).to eq(["ms:chat", "/global/news", "ms:chat"])
    [a, b, none].each { |c| expect(c.raw).not_to include("|") }

    # Resume with Last-Event-ID: only the site's own messages (and /global/).
    ra = open(["ms:chat", "/global/news"], "a", cursor: c0, query: "include=channel")
    wait_data(ra, %w[A1 G A2])
    expect(channels_of(ra)).to eq(["ms:chat", "/global/news", "ms:chat"])
    # A long-poll and a poll: the site's messages, under the public name.
    lp = SSEClient.open(@streams.port, "ms:chat", cursor: c0, query: "site=b&transport=long-poll&include=channel")
    lp.wait_closed
    expect(lp.data).to eq(%w[B1 B2])
    expect(channels_of(lp)).to eq(%w[ms:chat ms:chat])
    poll = SSEClient.open(@streams.port, "ms:chat", cursor: c0, query: "transport=poll")
    poll.wait_closed
    expect(poll.data).to eq(%w[N])
  ensure
    [a, b, b2, none, ra, lp, poll].each { |c| c&.close }
  end

  it "resets only the site whose burst outran the backlog, naming the public channel" do
    c0 = @pub.publish("ms:warm", "-")
    ids = %w[B1 B2 B3].map { |d| @pub.publish("ms:burst", d, site: "b") }
    # backlog_size is 5; Redis trims in nodes of 100 entries: far past it.
    @pub.post("/publish_seq?channel=ms:burst&site=a&count=250")
    b = open("ms:burst", "b", cursor: c0)
    a = open("ms:burst", "a", cursor: c0)
    wait_data(b, %w[B1 B2 B3])
    expect(b.events.map(&:type)).to eq(%w[message] * 3)
    expect(b.events.last.last_event_id).to eq(ids.last)
    reset = a.wait_for_events(1).first
    expect(reset.type).to eq("reset")
    expect(JSON.parse(reset.data)).to eq("channels" => ["ms:burst"])
    # Both go on live, each with its own site's messages.
    live!(2)
    @pub.publish("ms:burst", "B4", site: "b")
    @pub.publish("ms:burst", "A-after", site: "a")
    wait_data(b, %w[B1 B2 B3 B4])
    wait_until(message: "A-after") { a.pump; a.data.last == "A-after" }
    expect(a.data).not_to include("B4")
  ensure
    [a, b].each { |c| c&.close }
  end

  it "opens a token's channels on its own site only" do
    token_a = Spillway.sign(["ms:tok"], site_id: "a")
    plain = Spillway.sign(["ms:tok"], site_id: nil)
    expect(Spillway.sign(["ms:tok"], site_id: "b")).not_to eq(token_a)
    other = @streams.get("/stream?token=#{token_a}&site=b")
    expect(other.code).to eq("403")
    expect(other.body).to include("signed for another site")
    expect(@streams.get("/stream?token=#{plain}&site=a").code).to eq("403")
    expect(@streams.get("/stream?token=#{token_a}").code).to eq("403")
    a = SSEClient.open(@streams.port, [], query: "token=#{token_a}&site=a").tap(&:wait_for_head)
    expect(a.status).to eq(200)
    live!(1)
    @pub.publish("ms:tok", "for b", site: "b")
    @pub.publish("ms:tok", "unsited")
    @pub.publish("ms:tok", "for a", site: "a")
    wait_data(a, ["for a"])
  ensure
    a&.close
  end

  it "answers a site_id that raises or gives no site id with on_error or a 500, and refuses bad publishes" do
    expect(@streams.get("/stream?channel=ms:x&site=raise").code).to eq("500")
    answer = @streams.get("/stream?channel=ms:x&site=raise&on_error=answer")
    expect([answer.code, answer.body]).to eq(["418", "on_error saw ArgumentError: site_id blew up"])
    %w[pipe list].each { |bad| expect(@streams.get("/stream?channel=ms:x&site=#{bad}").code).to eq("500") }
    expect(@streams.get("/stream?channel=ms:x&site=#{'s' * 65}").code).to eq("500")
    expect(@streams.get("/stream?channel=a%7Cb&site=a").code).to eq("400")
    res = @pub.post("/publish?channel=ms:x&site=#{URI.encode_www_form_component('a b')}", "x")
    expect([res.code, res.body]).to eq(["422", "ArgumentError: invalid site_id \"a b\": 1 to 64 characters of " \
                                               "A-Z a-z 0-9 _ . -"])
    expect(@streams.stats[:connections]).to eq(0)
    expect(@streams.log_tail).to include("Spillway: site_id for /stream raised ArgumentError: site_id blew up")
  end
end

RSpec.describe "Multisite (memory backend)" do
  before(:all) do
    @streams = @pub = AppServer.new(config: { secret: MULTISITE_SECRET, backlog_size: 5 },
                                    middleware: { site_id: "by_query", on_error: "by_query" }).start
  end

  after(:all) { @streams&.stop }

  include_examples "multisite"
end

RSpec.describe "Multisite (Redis backend, two Pumas)" do
  before(:all) do
    @redis = RedisServer.new.start
    config = { redis_url: @redis.url, secret: MULTISITE_SECRET, backlog_size: 5 }
    middleware = { site_id: "by_query", on_error: "by_query" }
    @streams = AppServer.new(config: config, middleware: middleware).start
    @pub = AppServer.new(config: config, middleware: middleware).start
  end

  after(:all) do
    [@streams, @pub].each { |s| s&.stop }
    @redis&.cleanup
  end

  include_examples "multisite"

  it "serves Spillway.subscribe, backlog and last_id per site from what another process published" do
    Spillway.configure(redis_url: @redis.url, backlog_size: 5)
    c0 = Spillway.cursor
    got = Queue.new
    Spillway.subscribe("ms:sub", last_id: c0, site_id: "b") { |m| got << m }
    a = @pub.publish("ms:sub", "A1", site: "a")
    b = @pub.publish("ms:sub", "B1", site: "b")
    @pub.publish("ms:sub", "N")
    wait_until(message: "B1") { !got.empty? }
    m = got.pop
    expect([m.channel, m.data, m.id]).to eq(["ms:sub", "B1", b])
    expect(Spillway.backlog("ms:sub", since: c0, site_id: "a").map { |x| [x.channel, x.data, x.id] })
      .to eq([["ms:sub", "A1", a]])
    expect(Spillway.last_id("ms:sub", site_id: "a")).to eq(a)
    expect(Spillway.last_id("ms:sub", site_id: "b")).to eq(b)
    expect(Spillway.last_id("ms:sub", site_id: "c")).to be_nil
    # Published here, for site a: the other Puma's site-a stream gets it.
    stream = open("ms:sub", "a", server: @pub)
    live!(1, @pub)
    Spillway.publish("ms:sub", "from here", site_id: "a")
    wait_data(stream, ["from here"])
    expect(got).to be_empty
  ensure
    stream&.close
    Spillway.shutdown
  end

  it "keeps a site's backlog and idempotency keys under its own Redis keys, an unsited one under the old ones" do
    @pub.publish("ms:keys", "A", site: "a")
    @pub.publish("ms:keys", "N")
    expect(@redis.call("XLEN", "spillway:s:a|ms:keys")).to eq(1)
    expect(@redis.call("XLEN", "spillway:s:ms:keys")).to eq(1)
    # One key in two sites: two publishes (the second site's is not swallowed).
    ida = @pub.publish("ms:keys", "A2", site: "a", idempotency_key: "order-1")
    idb = @pub.publish("ms:keys", "B2", site: "b", idempotency_key: "order-1")
    expect(idb).not_to eq(ida)
    expect(@pub.publish("ms:keys", "A2 again", site: "a", idempotency_key: "order-1")).to eq(ida)
    expect(@redis.call("GET", "spillway:k:a|order-1")).to eq(ida)
    expect(@redis.call("GET", "spillway:k:b|order-1")).to eq(idb)
    expect(@redis.call("XLEN", "spillway:s:b|ms:keys")).to eq(1)
  end
end
