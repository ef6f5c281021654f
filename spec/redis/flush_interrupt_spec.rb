# frozen_string_literal: true

require "spec_helper"
require "timeout"

# Spillway.flush from several threads while Redis does not answer: an
# interrupt (Timeout, Thread#kill) ends the flush it was raised in, at once,
# and no other.
RSpec.describe "Spillway.flush interrupted while other threads flush" do
  before do
    @redis = RedisServer.new.start
    # Nothing times out on its own while Redis is paused: every flush below
    # ends by its interrupt or by Redis answering.
    Spillway.configure(redis_url: @redis.url, command_timeout: 60, health_interval: 3600)
    Spillway.publish("f", "warm-up", async: true)
    expect(Spillway.flush(timeout: 10)).to be(true) # the command link is up
    @redis.pause
    Spillway.publish("f", "while paused", async: true)
  end

  after do
    @redis.resume
    Spillway.shutdown
    @redis.cleanup
  end

  def interrupted_flush(seconds)
    t0 = monotonic
    expect { Timeout.timeout(seconds) { Spillway.flush(timeout: 30) } }.to raise_error(Timeout::Error)
    monotonic - t0
  end

  it "ends the flush Timeout interrupted within a second; the other one waits on until Redis answers" do
    other_result = :unset
    other = Thread.new { other_result = Spillway.flush(timeout: 30) }
    wait_until(message: "the other thread inside flush") { other.status == "sleep" }

    expect(interrupted_flush(0.5)).to be < 1.5 * Waiting::SLOW
    expect(other).to be_alive

    @redis.resume
    expect(other.join(10 * Waiting::SLOW)).to be_truthy
    expect(other_result).to be(true)
    data = @redis.call("XRANGE", "spillway:s:f", "-", "+").map { |e| e[1][1][/data: (.*)/, 1] }
    expect(data).to eq(["warm-up", "while paused"])
  end

  it "never loses the interrupt to flushes that other threads keep starting" do
    stop = false
    churn = Array.new(2) { Thread.new { Spillway.flush(timeout: 0) until stop } }
    20.times do |round|
      expect(interrupted_flush(0.05 + (round % 5) * 0.01)).to be < 1.5 * Waiting::SLOW
    end
  ensure
    stop = true
    churn&.each(&:join)
  end
end
