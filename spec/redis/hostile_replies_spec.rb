# frozen_string_literal: true

require "spec_helper"

# Replies a real Redis never sends, put into a real Puma's Redis links by a
# proxy in front of a real redis-server (spec/support/resp_proxy.rb). The
# process must log each one, lose nothing, and keep serving its streams.
RSpec.describe "Malformed replies from Redis" do
  def bulk(s)
    "$#{s.bytesize}\r\n#{s}\r\n"
  end

  # What the subscriber link may receive, and what the hub does with it:
  # :dropped (logged, the link stays) or :reconnect (logged, the link is
  # dropped and reconnected, and the gap repair reads back whatever the
  # reply may have carried).
  SUB_FRAMES = [
    ["a message whose channel is a nil bulk", :reconnect, "*3\r\n$7\r\nmessage\r\n$-1\r\n$10\r\nno id here\r\n"],
    ["a message whose channel is an integer", :reconnect, "*3\r\n$7\r\nmessage\r\n:7\r\n$10\r\nno id here\r\n"],
    ["a message whose channel is an array", :reconnect, "*3\r\n$7\r\nmessage\r\n*1\r\n:1\r\n$10\r\nno id here\r\n"],
    ["a message with a nil payload", :reconnect, "*3\r\n$7\r\nmessage\r\n$13\r\nspillway:chat\r\n$-1\r\n"],
    ["a message with an array payload", :reconnect, "*3\r\n$7\r\nmessage\r\n$13\r\nspillway:chat\r\n*0\r\n"],
    ["a message without a payload", :reconnect, "*2\r\n$7\r\nmessage\r\n$13\r\nspillway:chat\r\n"],
    ["a message with a fourth element", :reconnect,
     "*4\r\n$7\r\nmessage\r\n$13\r\nspillway:chat\r\n$10\r\nno id here\r\n:1\r\n"],
    ["a message without a Spillway id", :dropped, "*3\r\n$7\r\nmessage\r\n$13\r\nspillway:chat\r\n$10\r\nno id here\r\n"],
    ["a subscribe confirmation with a nil channel", :reconnect, "*3\r\n$9\r\nsubscribe\r\n$-1\r\n:1\r\n"],
    ["an unsubscribe confirmation with a string count", :reconnect,
     "*3\r\n$11\r\nunsubscribe\r\n$13\r\nspillway:chat\r\n$1\r\n1\r\n"],
    ["a pattern message", :reconnect, "*4\r\n$8\r\npmessage\r\n$1\r\n*\r\n$13\r\nspillway:chat\r\n$3\r\nabc\r\n"],
    ["an array whose kind is an integer", :reconnect, "*3\r\n:1\r\n$13\r\nspillway:chat\r\n$3\r\nabc\r\n"],
    ["an empty array", :reconnect, "*0\r\n"],
    ["a nil array", :reconnect, "*-1\r\n"],
    ["an integer", :reconnect, ":42\r\n"],
    ["a bulk string", :reconnect, "$3\r\nabc\r\n"],
    ["a status other than PONG", :reconnect, "+OK\r\n"],
    ["arrays nested seven deep", :reconnect, "*1\r\n" * 7 + "*0\r\n"]
  ].freeze

  before do
    @redis = RedisServer.new.start
    @proxy = RespProxy.new(@redis.port).start
    @server = AppServer.new(config: { redis_url: @proxy.url, heartbeat: 2, connect_timeout: 0.5,
                                      command_timeout: 0.5 }).start
    # This process publishes straight to Redis.
    Spillway.configure(redis_url: @redis.url)
  end

  after do
    @server&.stop
    @proxy&.stop
    @redis&.cleanup
  end

  # Both links up through the proxy, no stream waiting, nothing being repaired.
  def settled?
    s = @server.stats
    s[:redis_connected] && s[:joining].zero? && @proxy.live(:sub).size == 1 && @proxy.live(:cmd).size == 1
  end

  it "logs each malformed frame on the subscriber link and keeps serving the stream without a loss" do
    pid = @server.get("/pid").body
    client = SSEClient.open(@server.port, "chat")
    client.wait_for_head
    wait_until(message: "the stream live") { settled? && @server.stats[:connections] == 1 }
    Spillway.publish("chat", "0")
    client.wait_for_events(1)

    SUB_FRAMES.each_with_index do |(what, action, bytes), i|
      before = @server.stats
      @proxy.inject(:sub, bytes)
      after = wait_until(message: "the error logged for #{what}") do
        s = @server.stats
        s[:errors] > before[:errors] && s
      end
      expect(after[:last_error]).to match(/Redis/), "#{what}: #{after[:last_error]}"
      if action == :reconnect
        wait_until(message: "the reconnect after #{what}") { @server.stats[:redis_reconnects] > before[:redis_reconnects] }
      end
      wait_until(message: "the links back after #{what}") { settled? }
      expect(@server.stats[:redis_reconnects]).to eq(before[:redis_reconnects] + (action == :reconnect ? 1 : 0)), what
      Spillway.publish("chat", (i + 1).to_s)
      client.wait_for_events(i + 2)
    end

    client.pump
    expect(client.data).to eq((0..SUB_FRAMES.size).map(&:to_s))
    expect(client.events.map(&:type).uniq).to eq(["message"]) # no reset: nothing was lost
    expect(@server.get("/pid").body).to eq(pid)
    fresh = SSEClient.open(@server.port, "chat")
    fresh.wait_for_head
    wait_until(message: "the fresh stream live") { @server.stats[:connections] == 2 && @server.stats[:joining].zero? }
    Spillway.publish("chat", "last")
    expect(fresh.wait_for_events(1).map(&:data)).to eq(["last"])
    client.wait_for_events(SUB_FRAMES.size + 2)
  ensure
    [client, fresh].compact.each(&:close)
  end

  it "retries a resume whose reply is malformed on a new command link instead of sending a reset" do
    client = SSEClient.open(@server.port, "resume")
    client.wait_for_head
    wait_until(message: "the stream live") { settled? && @server.stats[:connections] == 1 }
    first = Spillway.publish("resume", "1")
    client.wait_for_events(1)
    client.close
    wait_until { @server.stats[:connections].zero? }
    Spillway.publish("resume", "2")
    Spillway.publish("resume", "3")

    # The resume script's answer is [last, [reset flags], [index, frame, ...]]:
    # one that is not a script's reply at all.
    before = @server.stats
    @proxy.replace_next(:cmd, ->(args) { args[0] == "EVALSHA" && args[2] != "1" }, "*2\r\n:1\r\n:2\r\n")
    back = SSEClient.open(@server.port, "resume", cursor: first)
    back.wait_for_events(2)
    expect(@proxy.replacements_left).to eq(0)
    Spillway.publish("resume", "4")
    back.wait_for_events(3)
    back.pump
    expect(back.events.map(&:type).uniq).to eq(["message"])
    expect(back.data).to eq(%w[2 3 4])
    s = @server.stats
    expect(s[:redis_reconnects]).to eq(before[:redis_reconnects] + 1)
    expect(s[:resets]).to eq(before[:resets])
    expect(s[:last_error]).to match(/Redis command link/)
  ensure
    [client, back].compact.each(&:close)
  end
end
