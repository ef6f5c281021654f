# frozen_string_literal: true

require "spec_helper"

# Spillway::Dashboard mounted at /spillway in the fixture app (real Puma,
# real Redis), shown in headless Chromium while traffic runs.
RSpec.describe "Spillway::Dashboard" do
  before(:all) do
    @redis = RedisServer.new.start
    @server = AppServer.new(config: { redis_url: @redis.url, secret: "d" * 40 }).start
  end

  after(:all) do
    @browser&.quit
    @server&.stop
    @redis&.cleanup
  end

  let(:server) { @server }

  def browser
    @browser ||= Browser.start
  end

  def text(page, css)
    page.evaluate("(document.querySelector(#{css.to_json}) || {}).textContent")
  end

  it "renders, goes live over Spillway's own stream, and its numbers move with the traffic" do
    page = browser.create_page
    errors = []
    page.on("Runtime.exceptionThrown") { |params| errors << params } if page.respond_to?(:on)
    page.go_to("http://127.0.0.1:#{server.port}/spillway")
    expect(text(page, "h1")).to start_with("Spillway")
    wait_until(timeout: 20, message: "the page live") { text(page, "#state") == "live" }
    pid = server.get("/pid").body
    wait_until(timeout: 20, message: "this process's row") { text(page, "#procs tbody").to_s.include?(pid) }
    # The page's own stream is one of the process's streams.
    wait_until(timeout: 10, message: "1 open stream shown") { text(page, "#v-connections") == "1" }

    clients = Array.new(3) { |i| SSEClient.open(server.port, ["dash:#{i}", "dash:all"]) }
    wait_until(timeout: 10, message: "4 open streams shown") { text(page, "#v-connections") == "4" }
    peak = 0
    deadline = monotonic + 20
    while monotonic < deadline
      server.post("/publish_seq?channel=dash:all&count=50", "")
      peak = [peak, text(page, "#v-deliveries").to_i].max
      break if peak.positive?

      sleep 0.2
    end
    expect(peak).to be > 0
    # The channels, busiest first: dash:all (3 streams, the messages) before
    # the three quiet ones, in name order; the page's own channel is not shown.
    rows = -> { page.evaluate("Array.from(document.querySelectorAll('#chans tbody tr')).map(r => Array.from(r.cells).map(c => c.textContent))") }
    wait_until(timeout: 10, message: "the busiest channels listed") do
      r = rows.call
      r.size == 4 && r[0][0] == "dash:all" && r[0][1] == "3" && r[0][3].to_f.positive?
    end
    expect(rows.call.map(&:first)).to eq(%w[dash:all dash:0 dash:1 dash:2])
    expect(rows.call.drop(1).map { |r| r[1] }).to eq(%w[1 1 1])
    # The chart has points.
    expect(page.evaluate("document.querySelector('#c-deliveries polyline').getAttribute('points').split(' ').length"))
      .to be > 1
    clients.each(&:close)
    wait_until(timeout: 10, message: "back to 1 open stream") { text(page, "#v-connections") == "1" }
    expect(errors).to eq([])
  ensure
    clients&.each(&:close)
  end

  it "streams only its own channel, whose name a client cannot guess, and 404s the rest" do
    res = server.get("/spillway/stream?channel=dash:other")
    expect(res.code).to eq("403")
    expect(server.get("/spillway/nothing").code).to eq("404")
    html = server.get("/spillway").body
    channel = html[/channel = "([^"]+)"/, 1]
    expect(channel).to match(/\Aspillway-dashboard:\h{32}\z/)
    expect(channel).to eq("spillway-dashboard:#{OpenSSL::HMAC.hexdigest('SHA256', 'd' * 40, 'spillway dashboard')[0, 32]}")
  end
end
