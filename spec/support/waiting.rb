# frozen_string_literal: true

# Waiting on conditions, with deadlines; never a fixed sleep.
module Waiting
  class Timeout < StandardError; end

  # Under valgrind (rake spec:valgrind) everything is ~10x slower: deadlines
  # stretch by this factor.
  SLOW = ENV["SPILLWAY_VALGRIND"] ? 10 : 1

  module_function

  # Polls the block until it returns truthy; returns that value or raises
  # with `message` (and the last value) after `timeout` seconds.
  def wait_until(timeout: 10, interval: 0.005, message: "condition")
    timeout *= SLOW
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    last = nil
    loop do
      last = yield
      return last if last

      if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
        raise Timeout, "timed out after #{timeout}s waiting for #{message} (last: #{last.inspect})"
      end

      sleep interval
    end
  end

  def monotonic
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  def free_port
    server = TCPServer.new("127.0.0.1", 0)
    server.addr[1]
  ensure
    server&.close
  end
end
