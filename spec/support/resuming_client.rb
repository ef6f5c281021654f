# frozen_string_literal: true

# A client that behaves like a browser's EventSource: when the server closes
# the stream (or the connection breaks) it reconnects with the Last-Event-ID
# it has, and keeps every event it received across connections.
class ResumingClient
  attr_reader :channels, :events, :reconnects

  def initialize(port, channels, **opts)
    @port = port
    @channels = Array(channels)
    @opts = opts
    @events = []
    @reconnects = 0
    @client = SSEClient.open(@port, @channels, **@opts)
    @seen = 0
  end

  # Reads what is there; on EOF reconnects from the last id received.
  def pump
    return reconnect if @client.nil?

    open = @client.pump
    fresh = @client.events.drop(@seen)
    @events.concat(fresh)
    @seen += fresh.size
    reconnect unless open
    true
  end

  # nil while there is no connection (a reconnect failed; pump tries again).
  def to_io
    @client&.to_io
  end

  def status
    @client&.status
  end

  def resets
    @events.count { |e| e.type == "reset" }
  end

  def last_event_id
    @events.reverse_each { |e| return e.last_event_id unless e.last_event_id.to_s.empty? }
    @opts[:cursor]
  end

  def close
    @client&.close
  end

  private

  # Like a browser, not in a tight loop: at most one attempt per 50 ms.
  def reconnect
    @client&.close
    @client = nil
    now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    return if @next_try && now < @next_try

    @next_try = now + 0.05
    @reconnects += 1
    @client = SSEClient.open(@port, @channels, **@opts, cursor: last_event_id)
    @seen = 0
  rescue SystemCallError
    @client = nil # the server is not accepting right now: the next pump tries again
  end
end

# Many ResumingClients read by one thread.
class ResumingSwarm
  include Waiting

  attr_reader :clients

  def initialize(clients)
    @clients = clients
  end

  def pump_all(timeout = 0.05)
    by_io = {}
    @clients.each do |c|
      io = c.to_io
      io ? by_io[io] = c : c.pump
    end
    return if by_io.empty?

    ready, = IO.select(by_io.keys, nil, nil, timeout)
    ready&.each { |io| by_io[io].pump }
  end

  def wait_all(timeout: 30, message: "all clients")
    wait_until(timeout: timeout, interval: 0, message: message) do
      pump_all
      @clients.all? { |c| yield c }
    end
  end

  def close_all
    @clients.each(&:close)
  end
end

# Judges what a stream received against a numbered sequence
# ("<channel>:<n>", n = 1..count on each channel): per channel, every number
# once and in order, except that an `event: reset` naming the channel may
# skip ahead (the checker reports how far, so a spec can demand none).
module SequenceCheck
  module_function

  # => { ok:, problems: [...], resets: { channel => [[after, next], ...] }, last: { channel => n } }
  def check(events, channels, count)
    last = channels.to_h { |c| [c, 0] }
    resets = Hash.new { |h, k| h[k] = [] }
    pending_reset = {}
    problems = []
    events.each do |e|
      if e.type == "reset"
        JSON.parse(e.data)["channels"].each { |c| pending_reset[c] = true }
        next
      end
      ch, n = e.data.split(":", 2)
      n = Integer(n)
      unless last.key?(ch)
        problems << "a message of #{ch}, which this stream did not ask for"
        next
      end
      if n <= last[ch]
        problems << "#{ch}: #{n} after #{last[ch]} (duplicate or out of order)"
      elsif n != last[ch] + 1
        if pending_reset[ch]
          resets[ch] << [last[ch], n]
        else
          problems << "#{ch}: #{n} after #{last[ch]}, no reset (lost #{last[ch] + 1}..#{n - 1})"
        end
      end
      pending_reset.delete(ch)
      last[ch] = n if n > last[ch]
    end
    incomplete = last.reject { |_, n| n == count }
    problems << "incomplete: #{incomplete.inspect}" unless incomplete.empty?
    { ok: problems.empty?, problems: problems, resets: resets, last: last }
  end
end
