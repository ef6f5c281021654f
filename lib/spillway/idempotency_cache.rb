# frozen_string_literal: true

module Spillway
  # The memory backend's idempotency keys: the id each key was first
  # published under, for idempotency_ttl seconds. (With Redis the publish
  # script keeps them, NS:k:<key>.)
  #
  # Bounded: at most `max` keys. Every entry lives the same ttl, so the
  # insertion order is the expiry order and expired keys are dropped from
  # the front as they come; past `max`, the oldest live key goes too (a
  # repeat of it would then publish again) and `evicted` counts it.
  class IdempotencyCache
    MAX_ENTRIES = 100_000

    attr_reader :evicted

    def initialize(ttl, max: MAX_ENTRIES)
      @ttl = Float(ttl)
      @max = max
      @entries = {} # key => [id, expires_at]
      @lock = Mutex.new
      @evicted = 0
    end

    # The id published under key: the stored one while it lives, otherwise
    # the block's (it publishes). Keyed publishes run one at a time, so two
    # threads with the same key never both publish.
    def fetch(key)
      key = key.b.freeze # the bytes, as Redis sees a key
      @lock.synchronize do
        now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        expire(now)
        hit = @entries[key]
        return hit[0] if hit

        id = yield
        @entries[key] = [id, now + @ttl]
        if @entries.size > @max
          @entries.shift
          @evicted += 1
        end
        id
      end
    end

    def size
      @lock.synchronize { @entries.size }
    end

    private

    def expire(now)
      while (first = @entries.first) && first[1][1] <= now
        @entries.shift
      end
    end
  end
end
