# frozen_string_literal: true

require "socket"

# Server-side subscribe (Spillway.subscribe, Spillway.backlog,
# Spillway.last_id). A subscription is a stream of the native hub like a
# browser's, attached to one end of a socket pair without an HTTP head and
# with ATTACH_CHANNEL (each frame names its channel; a reset frame names
# none, so a published event called "reset" is never taken for one). The
# hub does the join, the backlog replay from the cursor, gap repair after a
# lost Redis link, resets, heartbeats and the slow-stream policy, exactly as
# for a browser; the native thread only writes bytes. One Ruby thread per
# process (Subscriber) waits in IO.select on the other ends, parses the
# frames and runs the blocks. When the hub closes a stream (a restart by
# Spillway.configure, a stream dropped for lagging past max_lag) the
# subscription opens it again from its last id, as EventSource would.
# Spillway.backlog is a poll (ATTACH_POLL) on a socket pair, read to EOF.
module Spillway
  # A message as a server-side subscriber gets it (Spillway.subscribe,
  # Spillway.backlog): channel, data (a UTF-8 String, as published), id (the
  # same id a browser sees), event (the event name given to publish, or nil).
  Message = Struct.new(:channel, :data, :id, :event) do
    def reset?
      false
    end
  end

  # What a subscription's on_reset callback gets when the backlog no longer
  # reaches back to its last id (trimmed, expired, Redis lost its data, a
  # memory hub restarted): messages were missed that nobody can replay. The
  # subscription goes on from id, the newest id at the time.
  Reset = Struct.new(:channel, :id) do
    def reset?
      true
    end
  end

  # Spillway.backlog raises it when the backlog no longer reaches back to
  # since: id is where a reader goes on from (the newest id at the time).
  class ResetError < Error
    attr_reader :channel, :id

    def initialize(channel, id)
      @channel = channel
      @id = id
      super("the backlog of #{channel} no longer reaches back to the given id (go on from #{id})")
    end
  end

  # A strict reader of what the hub writes on a subscription's socket:
  # LF-terminated lines, frames ended by an empty line, the fields id, event,
  # channel, data and retry, comments (the opening one, heartbeats). A frame
  # of a stream attached with ATTACH_CHANNEL names its channel; a reset frame
  # (event: reset, no channel line) names its channels in its data.
  class SSEReader
    class ProtocolError < Spillway::Error; end

    Frame = Struct.new(:id, :event, :channel, :data)

    def initialize(max_line)
      @buf = +"".b
      @max_line = max_line
      reset_frame
    end

    # Feeds bytes; yields each complete frame that has data.
    def feed(bytes)
      @buf << bytes
      pos = 0
      while (nl = @buf.index("\n", pos))
        line(@buf.byteslice(pos, nl - pos)) { |f| yield f }
        pos = nl + 1
      end
      @buf = pos.zero? ? @buf : (@buf.byteslice(pos..) || +"".b)
      raise ProtocolError, "a line of more than #{@max_line} bytes" if @buf.bytesize > @max_line
    end

    private

    def reset_frame
      @id = @event = @channel = @data = nil
    end

    def line(text)
      if text.empty?
        frame = Frame.new(@id, @event, @channel, @data) if @data
        reset_frame
        yield frame if frame
        return
      end
      return if text.start_with?(":")
      raise ProtocolError, "a CR in the stream" if text.include?("\r")

      colon = text.index(":")
      field = colon ? text.byteslice(0, colon) : text
      value = colon ? text.byteslice(colon + 1..) : +""
      value = value.byteslice(1..) if value.start_with?(" ")
      case field
      when "data" then @data ? (@data << "\n" << value) : (@data = +value)
      when "id" then @id = value.force_encoding(Encoding::UTF_8)
      when "event" then @event = value.force_encoding(Encoding::UTF_8)
      when "channel" then @channel = value.force_encoding(Encoding::UTF_8)
      when "retry" then nil
      else raise ProtocolError, "unknown field #{field.byteslice(0, 40).inspect}"
      end
    end
  end

  # One server-side subscription (Spillway.subscribe): a stream of the hub,
  # on one end of a socket pair, whose other end the process's subscriber
  # thread reads.
  class Subscription
    attr_reader :channel

    def initialize(channel, last_id, block, on_reset)
      @channel = channel
      @last_id = last_id
      @block = block
      @on_reset = on_reset
      @lock = Mutex.new
      @active = true
      @pid = Process.pid
      @io = nil
      @reader = nil
      @failures = 0
      @retry_at = nil
    end

    # The id of the last message (or reset) delivered: where the
    # subscription resumes when its stream is opened again. No lock: the
    # block may ask too.
    attr_reader :last_id

    def active?
      @active && @pid == Process.pid
    end

    # Stops delivery: once it returns no callback of this subscription
    # starts (one running on another thread finishes first); the hub's
    # stream closes a moment later. Idempotent; a no-op in a forked child.
    def unsubscribe
      return nil unless @pid == Process.pid

      # From its own callback: the lock is ours already.
      if @lock.owned?
        @active = false
      else
        @lock.synchronize { @active = false }
      end
      Subscriber.remove(self)
      nil
    end

    def inspect
      "#<Spillway::Subscription #{@channel} last_id=#{@last_id.inspect}#{active? ? '' : ' (unsubscribed)'}>"
    end

    # ---- the subscriber thread's side ------------------------------------

    attr_accessor :io, :retry_at # :nodoc:

    # Opens the hub's stream from the last id. true, or false (the retry is
    # scheduled) when the hub is full or cannot be reached.
    def attach # :nodoc:
      ours, theirs = UNIXSocket.pair
      hub = Spillway.hub
      raise Error, "max_connections reached" unless hub.reserve

      begin
        hub.attach(theirs, [@channel], @last_id, Native::Hub::ATTACH_CHANNEL | Native::Hub::ATTACH_ALL)
      rescue StandardError
        hub.unreserve
        raise
      end
      theirs.close
      @io = ours
      @reader = SSEReader.new(Subscriber.max_line)
      @retry_at = nil
      true
    rescue StandardError => e
      ours&.close
      theirs&.close unless theirs.nil? || theirs.closed?
      @failures += 1
      delay = [0.05 * (2**[@failures - 1, 6].min), 2.0].min
      @retry_at = Subscriber.now + delay
      Spillway.warn_once(:"subscribe_attach_#{e.class}",
                         "Spillway.subscribe: cannot open the stream of #{@channel} (#{e.class}: #{e.message}); " \
                         "trying again (said once per kind of failure)")
      false
    end

    # Reads what is there; false at EOF (the hub closed the stream).
    def read # :nodoc:
      chunk = @io.read_nonblock(64 * 1024, exception: false)
      return true if chunk == :wait_readable
      return false if chunk.nil?

      @reader.feed(chunk) { |frame| deliver(frame) }
      true
    rescue SSEReader::ProtocolError => e
      log(:error, "Spillway.subscribe: #{@channel}: unexpected stream (#{e.message}); opening it again")
      false
    rescue IOError, SystemCallError
      false
    end

    # The stream ended: opened again from the last id at once the first
    # time, then with a growing pause while it keeps ending before a
    # message arrives.
    def closed # :nodoc:
      @io&.close unless @io.nil? || @io.closed?
      @io = nil
      @retry_at = Subscriber.now + (@failures.zero? ? 0 : [0.05 * (2**[@failures - 1, 6].min), 2.0].min)
      @failures += 1
    end

    def deactivate # :nodoc:
      @active = false
    end

    def close_io # :nodoc:
      @io.close if @io && !@io.closed?
      @io = nil
    end

    private

    def deliver(frame)
      @failures = 0
      if frame.channel.nil? && frame.event == "reset"
        event = Reset.new(@channel, frame.id)
        handler = @on_reset
      elsif frame.channel == @channel
        event = Message.new(frame.channel, frame.data.force_encoding(Encoding::UTF_8), frame.id, frame.event)
        handler = @block
      else
        return
      end
      @lock.synchronize { run(handler, event) }
    end

    # Under @lock: unsubscribe from another thread waits for it.
    def run(handler, event)
      return unless @active

      @last_id = event.id if event.id && !event.id.empty?
      if handler.nil?
        log(:warn, "Spillway.subscribe: #{@channel}: reset: the backlog no longer reaches back to the last id; " \
                   "going on from #{event.id} (pass on_reset: to be told)")
        return
      end
      handler.call(event)
    rescue StandardError => e
      where = e.backtrace&.first
      log(:error, "Spillway.subscribe: the #{event.reset? ? 'on_reset callback' : 'block'} for #{@channel} " \
                  "raised #{e.class}: #{e.message}#{where ? " (#{where})" : ''}; the subscription goes on")
    end

    # A logger that fails must not end the subscriber thread.
    def log(level, line)
      Spillway.logger.public_send(level, line)
    rescue StandardError => e
      $stderr.puts("#{line} [Spillway.logger failed: #{e.class}: #{e.message}]")
    end
  end

  # The subscriber thread of this process: one thread, one IO.select over
  # every subscription's socket and a wake-up pipe. Callbacks run on it, one
  # at a time, in order per subscription.
  module Subscriber
    @lock = Mutex.new
    @subs = []
    @thread = nil
    @wake_r = @wake_w = nil
    @pid = Process.pid

    class << self
      attr_reader :thread

      def now
        Process.clock_gettime(Process::CLOCK_MONOTONIC)
      end

      # The longest line a frame of this configuration can have.
      def max_line
        Spillway.config.max_message_bytes + 1024
      end

      def add(sub)
        @lock.synchronize do
          forget! unless @pid == Process.pid
          @subs << sub
          sub.retry_at = 0
          start unless @thread&.alive?
        end
        wake
      end

      def remove(sub)
        @lock.synchronize { @subs.delete(sub) && (@closing ||= []) << sub }
        wake
      end

      # Every subscription of this process ends (Spillway.shutdown).
      def close_all(timeout)
        thread = @lock.synchronize do
          return unless @pid == Process.pid

          @subs.each(&:deactivate)
          (@closing ||= []).concat(@subs)
          @subs = []
          @state[:stopping] = true if @state
          t = @thread
          @thread = nil
          t
        end
        wake
        thread.join(timeout) if thread && thread != Thread.current
      end

      # In a fork child: the parent's subscriptions are not ours; our copies
      # of their sockets close (the hub sees the parent's end only).
      def forget!
        @subs.each(&:close_io)
        (@closing || []).each(&:close_io)
        @subs = []
        @closing = []
        @thread = nil
        @state = nil
        [@wake_r, @wake_w].each { |io| io&.close unless io.nil? || io.closed? }
        @wake_r = @wake_w = nil
        @pid = Process.pid
        @lock = Mutex.new
      end

      def forked!
        forget! unless @pid == Process.pid
      end

      def count
        @lock.synchronize { @pid == Process.pid ? @subs.size : 0 }
      end

      private

      # Each thread has its own state and pipe: one that close_all stopped
      # may still be finishing while a new one starts.
      def start
        @wake_w&.close unless @wake_w.nil? || @wake_w.closed?
        @wake_r, @wake_w = IO.pipe
        state = @state = { stopping: false, wake_r: @wake_r }
        @thread = Thread.new { run(state) }
        @thread.name = "spillway-subscribe"
        @thread.report_on_exception = true
      end

      def wake
        @wake_w&.write_nonblock("x", exception: false)
      rescue IOError, SystemCallError
        nil # the thread ended (its end of the pipe is closed)
      end

      def run(state)
        wake_r = state[:wake_r]
        loop do
          subs, closing = @lock.synchronize do
            c = @closing || []
            @closing = []
            [@subs.dup, c]
          end
          if state[:stopping]
            @lock.synchronize do
              (@closing || []).each(&:close_io)
              @closing = []
            end
            break
          end
          closing.each(&:close_io)

          t = now
          waits = []
          subs.each do |s|
            next unless s.active?

            if s.io.nil?
              s.attach if s.retry_at && s.retry_at <= t
              waits << s.retry_at if s.io.nil? && s.retry_at
            end
          end
          by_io = subs.each_with_object({}) { |s, h| h[s.io] = s if s.io && s.active? }
          timeout = waits.empty? ? nil : [waits.min - now, 0].max
          ready, = IO.select([wake_r, *by_io.keys], nil, nil, timeout)
          next unless ready

          ready.each do |io|
            if io == wake_r
              wake_r.read_nonblock(4096, exception: false)
              next
            end
            sub = by_io[io]
            sub.closed unless sub.read || !sub.active?
          end
        end
      ensure
        wake_r.close unless wake_r.closed?
      end
    end
  end
end
