# frozen_string_literal: true

require "spec_helper"
require "open3"

# Turbo Streams over Spillway: examples/turbo (Rails 7.2, turbo-rails, a
# model with broadcasts_to, no Action Cable) on a real Puma with a real
# Redis; records created by other processes (bin/rails runner); headless
# Chromium as the browser.
RSpec.describe "Turbo Streams over Spillway" do
  let(:app) { File.join(AppServer::ROOT, "examples", "turbo") }

  before(:all) do
    @redis = RedisServer.new.start
    @db = File.join(Dir.mktmpdir("spillway-turbo"), "chat.sqlite3")
    @env = {
      "REDIS_URL" => @redis.url, "DATABASE_PATH" => @db, "SPILLWAY_TEST" => "1", "RAILS_ENV" => "production",
      "SECRET_KEY_BASE" => "t" * 128, "BUNDLE_GEMFILE" => File.join(AppServer::ROOT, "Gemfile"), "RAILS_LOG_LEVEL" => "warn"
    }
    @server = AppServer.new(rackup: File.join(AppServer::ROOT, "examples", "turbo", "config.ru"), env: @env, threads: "1:1").start
  end

  after(:all) do
    @browser&.quit
    @server&.stop
    @redis&.cleanup
  end

  let(:server) { @server }

  # `bin/rails runner CODE` in a process of its own; returns its stdout.
  def runner(code, expect_ok: true)
    out, err, status = Open3.capture3(@env.merge("RUBYLIB" => File.join(AppServer::ROOT, "lib")), RbConfig.ruby,
                                      File.join(app, "bin", "rails"), "runner", code, chdir: app)
    expect(status.success?).to be(expect_ok), "runner #{code}: #{err.lines.last(5).join}"
    [out, err]
  end

  def browser
    @browser ||= Browser.start
  end

  def page_messages(page)
    page.evaluate("Array.from(document.querySelectorAll('#messages .message')).map(e => e.textContent)")
  end

  it "renders a <turbo-stream-source> on Spillway's mount and never loads Action Cable" do
    expect(JSON.parse(server.get("/facts").body)).to eq("action_cable" => false)
    html = server.get("/").body
    src = html[/<turbo-stream-source src="([^"]+)"/, 1]
    expect(src).to match(%r{\A/stream\?turbo=[^&]+&amp;lastEventId=\d+-\d+\z})
  end

  it "refuses a forged Turbo stream name, and channel= beside one beyond its channel" do
    src = CGI.unescapeHTML(server.get("/").body[/<turbo-stream-source src="([^"]+)"/, 1])
    signed = CGI.unescape(src[/turbo=([^&]+)/, 1])
    data, digest = signed.split("--")
    forged = "#{Base64.strict_encode64('"secret-room"')}--#{digest}"
    res = server.get("/stream?turbo=#{CGI.escape(forged)}")
    expect(res.code).to eq("403")
    expect(res.body).to include("Turbo stream name refused")
    res = server.get("/stream?turbo=#{CGI.escape(signed)}&channel=turbo:other")
    expect(res.code).to eq("403")
    expect(Base64.decode64(data)).to eq('"chat"')
  end

  it "delivers a broadcast made between render and connect (the page's cursor), as turbo-stream HTML" do
    src = CGI.unescapeHTML(server.get("/").body[/<turbo-stream-source src="([^"]+)"/, 1])
    runner('Message.create!(body: "between render and connect")')
    client = SSEClient.new(server.port, src)
    client.wait_for_events(1)
    html = client.events.first.data
    expect(html).to include('<turbo-stream action="append" target="messages">')
    expect(html).to include("between render and connect")

    # The other callbacks of broadcasts_to, and Turbo::StreamsChannel itself.
    runner('m = Message.find_by!(body: "between render and connect"); m.update!(body: "edited"); m.destroy!; ' \
           'Turbo::StreamsChannel.broadcast_refresh_to("chat"); ' \
           'Turbo::StreamsChannel.broadcast_prepend_to("chat", target: "messages", html: "<p>top</p>")')
    client.wait_for_events(5)
    actions = client.events.map { |e| e.data[/<turbo-stream action="(\w+)"/, 1] }
    expect(actions).to eq(%w[append replace remove refresh prepend])
    expect(client.events[1].data).to include("edited")
  ensure
    client&.close
  end

  it "turns a reset into a Turbo refresh, the one thing a <turbo-stream-source> applies" do
    src = CGI.unescapeHTML(server.get("/").body[/<turbo-stream-source src="([^"]+)"/, 1])
    # A cursor Redis's backlog cannot reach back to (the namespace's history starts later).
    stale = src.sub(/lastEventId=[^&]+/, "lastEventId=1000-0")
    client = SSEClient.new(server.port, stale)
    client.wait_for_events(1)
    event = client.events.first
    expect(event.type).to eq("message")
    expect(event.data).to eq('<turbo-stream action="refresh"></turbo-stream>')
    expect(event.last_event_id).to match(/\A\d+-\d+\z/)
    expect(client.events.map(&:type)).not_to include("reset")
    # A plain stream on the same channel still gets the SSE reset.
    plain = SSEClient.open(server.port, "turbo:chat", cursor: "1000-0")
    plain.wait_for_events(1)
    expect(plain.events.first.type).to eq("reset")
  ensure
    client&.close
    plain&.close
  end

  it "raises ArgumentError naming the limit for a broadcast over max_message_bytes, in the broadcasting process" do
    _, err = runner('Turbo::StreamsChannel.broadcast_append_to("chat", target: "messages", html: "x" * 70_000)',
                    expect_ok: false)
    expect(err).to include("max_message_bytes")
  end

  it "shows on the open page what other processes create, and after an app-server restart exactly the " \
     "records created meanwhile, once each" do
    page = browser.create_page
    page.go_to("http://127.0.0.1:#{server.port}/")
    before = page_messages(page)
    wait_until(timeout: 20, message: "the page's stream open") { server.stats[:connections] >= 1 }
    runner('Message.create!(body: "live one")')
    wait_until(timeout: 20, message: "'live one' on the page") { page_messages(page).include?("live one") }

    page.evaluate("window.__sameDocument = true")
    server.stop
    runner('Message.create!(body: "while down 1"); Message.create!(body: "while down 2")')
    server.start
    wait_until(timeout: 30, message: "the records created while the server was down") do
      page_messages(page).include?("while down 2")
    end
    # The stream resumed with Last-Event-ID: no reload (what was there is still
    # there), every record once, in order.
    expect(page_messages(page)).to eq(before + ["live one", "while down 1", "while down 2"])
    expect(page.evaluate("window.__sameDocument === true")).to be(true)
    runner('Message.create!(body: "after")')
    wait_until(timeout: 20, message: "'after' on the page") { page_messages(page).include?("after") }
    expect(page_messages(page).count("while down 1")).to eq(1)
  end
end
