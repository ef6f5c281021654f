# frozen_string_literal: true

require "spec_helper"

# spillway.js on a multisite app (Spillway::Site): each page's stream URL
# carries its site (the fixture's site_id reads ?site=). The client routes
# messages by the `channel:` line, so a page gets its subscribers' messages
# only when the hub names the public channel it asked for.
RSpec.describe "spillway.js on a multisite app" do
  before(:all) do
    @redis = RedisServer.new.start
    @server = AppServer.new(config: { redis_url: @redis.url, heartbeat: 0.5 },
                            middleware: { site_id: "by_query" }).start
  end

  after(:all) do
    @browser&.quit
    @server&.stop
    @redis&.cleanup
  end

  after do
    @browser&.reset
    wait_until(timeout: 15, message: "no stream left") { @server.stats[:connections].zero? } if @server
  end

  def browser
    @browser ||= Browser.start
  end

  def open_page(site, channels)
    page = browser.create_page
    page.go_to("http://127.0.0.1:#{@server.port}/client_page?channels=#{channels.join(',')}&heartbeat=0.5&site=#{site}")
    page
  end

  def streaming!(page, channels)
    wait_until(timeout: 15, message: "the page streaming") do
      d = page.evaluate("bus.diagnostics()")
      d["status"] == "streaming" && d["streamChannels"] == channels.sort
    end
  end

  it "hands each page its own site's messages under the public channel name, and /global/ to both" do
    channels = %w[ms:room /global/news]
    a = open_page("a", channels)
    b = open_page("b", channels)
    [a, b].each { |p| streaming!(p, channels) }
    wait_until(timeout: 10, message: "2 joined streams") { s = @server.stats; s[:connections] == 2 && s[:joining].zero? }
    @server.publish("ms:room", "for a", site: "a")
    @server.publish("ms:room", "for b", site: "b")
    @server.publish("/global/news", "for all", site: "a")
    @server.publish("ms:room", "end a", site: "a")
    @server.publish("ms:room", "end b", site: "b")
    { a => ["ms:room", "for a", "end a"], b => ["ms:room", "for b", "end b"] }.each do |page, (room, first, last)|
      wait_until(timeout: 10, message: "#{last} on the page") { page.evaluate("window.got").any? { |m| m[1] == last } }
      got = page.evaluate("window.got").map { |m| m[0, 2] }
      expect(got).to eq([[room, first], ["/global/news", "for all"], [room, last]])
    end
  end
end
