# frozen_string_literal: true

require "socket"
require "json"

# A lean EventSource for numbered sequences ("<channel>:<n>" per channel),
# for fault runs with hundreds of streams at thousands of messages a second,
# where keeping every event (SSEClient) costs the test more than the
# server. It checks as it reads: per channel every number once and in order,
# except that an `event: reset` naming the channel may skip ahead. When the
# server closes the stream it reconnects with the last id it got, like a
# browser (or, with transport=long-poll, like a long-polling client). Frames are parsed by one regular expression over what arrived.
class SequenceClient
  FRAME = /(?:^|\n)id: ([^\n]*)\n(?:event: ([^\n]*)\n)?data: ([^\n]*)\n\n/.freeze

  attr_reader :channels, :last, :problems, :resets, :reconnects, :last_id, :skipped

  # query: more of the query string, e.g. "transport=long-poll" (a client
  # that asks again from its last id after every answer).
  def initialize(port, channels, query: nil)
    @port = port
    @query = query
    @channels = Array(channels)
    @last = @channels.to_h { |c| [c, 0] }
    @pending_reset = {}
    @problems = []
    @resets = 0
    @skipped = 0
    @reconnects = 0
    @last_id = nil
    connect
  end

  def to_io
    @sock
  end

  # It never ends of its own accord: it reconnects.
  def eof?
    false
  end

  def complete?(count)
    @last.values.all? { |n| n >= count }
  end

  # Reads what is there; on EOF reconnects (at most every 50 ms).
  def pump
    return reconnect if @sock.nil?

    loop do
      chunk = @sock.read_nonblock(262_144, exception: false)
      case chunk
      when :wait_readable then return
      when nil then return reconnect
      else feed(chunk)
      end
    end
  rescue Errno::ECONNRESET, IOError
    reconnect
  end

  def close
    @sock&.close
  end

  private

  def connect
    @sock = Socket.tcp("127.0.0.1", @port)
    q = @channels.map { |c| "channel=#{c}" }.join("&")
    q << "&#{@query}" if @query
    head = +"GET /stream?#{q} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
    head << "Last-Event-ID: #{@last_id}\r\n" if @last_id
    @sock.write(head << "\r\n")
    @buf = +"".b
    @head = false
  rescue SystemCallError
    @sock = nil
  end

  def reconnect
    @sock&.close
    @sock = nil
    now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    return if @next_try && now < @next_try

    @next_try = now + 0.05
    @reconnects += 1
    connect
  end

  def feed(chunk)
    @buf << chunk
    unless @head
      i = @buf.index("\r\n\r\n") or return
      @problems << "status #{@buf[/\A\S+ (\d+)/, 1]}" unless @buf.start_with?("HTTP/1.1 200")
      @buf = @buf.byteslice(i + 4..)
      @head = true
    end
    cut = @buf.rindex("\n\n") or return
    @buf.byteslice(0, cut + 2).scan(FRAME) { |id, type, data| event(id, type, data) }
    @buf = @buf.byteslice(cut + 2..)
  end

  def event(id, type, data)
    @last_id = id
    if type == "reset"
      @resets += 1
      JSON.parse(data)["channels"].each { |c| @pending_reset[c] = true }
      return
    end
    ch, n = data.split(":", 2)
    n = Integer(n)
    prev = @last[ch]
    if prev.nil?
      @problems << "a message of #{ch}, which this stream did not ask for"
    elsif n <= prev
      @problems << "#{ch}: #{n} after #{prev} (duplicate or out of order)"
    else
      if n == prev + 1 then nil
      elsif @pending_reset[ch] then @skipped += n - prev - 1
      else @problems << "#{ch}: #{n} after #{prev}, no reset (lost #{prev + 1}..#{n - 1})"
      end
      @pending_reset.delete(ch)
      @last[ch] = n
    end
  end
end

