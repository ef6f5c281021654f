# frozen_string_literal: true

require "json"
require "spillway/version"
require "spillway/spillway_ext"
require "spillway/configuration"
require "spillway/fallback"
require "spillway/subscription"
require "spillway/idempotency_cache"
require "spillway/instrumentation"
require "spillway/site"
require "spillway/targets"
require "spillway/token"
require "spillway/turbo"
require "spillway/middleware"
require "spillway/metrics"
require "spillway/dashboard"

# Spillway: Server-Sent Events for Rack apps, served by a native event loop
# inside the app process, fanned out through Redis (or in-process).
#
#   use Spillway::Middleware                       # GET /stream?channel=chat:42
#   Spillway.publish("chat:42", "hello", event: "message")
module Spillway
  # Event names: like an SSE field value, without CR, LF or NUL, kept short.
  MAX_EVENT_LENGTH = 128
  # Idempotency keys: bytes, without CR, LF or NUL (they become a Redis key).
  MAX_IDEMPOTENCY_KEY_LENGTH = 256

  @lock = Mutex.new
  @config = Configuration.new
  @hub = nil
  @log_thread = nil
  @events_thread = nil
  @publisher = nil
  @idempotency = nil
  @pid = Process.pid
  @published = 0
  @at_exit_installed = false
  @warned = {}
  RECENT_LOG = 50
  @recent = []
  @recent_lock = Mutex.new
  @forked = false

  class << self
    # Spillway.configure(redis_url: "redis://...", heartbeat: 10)
    # Spillway.configure { |c| c.max_connections = 5000 }
    # Returns the configuration. Configuring again restarts the native hub.
    def configure(**options)
      @lock.synchronize do
        check_pid!
        # The new values replace the current ones before any is checked: a
        # redis_tls file that is gone fails only while it is still wanted.
        config = Configuration.new(**current_settings.merge(options))
        yield config if block_given?
        restart_needed = @hub || @publisher
        stop_native(2.0) if restart_needed
        @config = config
      end
      @config
    end

    def config
      @config
    end

    def logger
      @config.effective_logger
    end

    # Publishes data on channel to every stream listening to it, in every
    # process (Redis) or in this process (memory). data is a String (UTF-8);
    # a Hash or Array is sent as JSON. Returns the message id, or nil for an
    # async publish (Redis: queued on this process's link, see flush).
    #
    # idempotency_key: a publish under a key that was published within
    # idempotency_ttl seconds publishes nothing and returns the first id
    # (Redis: in every process of the namespace; memory: in this process).
    # Without one, Spillway still makes one up per call, so a publish it
    # sends again after a lost reply is never doubled.
    # user_ids:, group_ids:, client_ids: (Arrays of ids) reach only the
    # streams whose identity matches (Targets; the middleware's identify).
    # site_id: the site (multisite, Spillway::Site) whose streams get it;
    # by default the configured site_id proc's answer; nil: no site. A
    # "/global/..." channel reaches every site.
    def publish(channel, data, event: nil, async: false, idempotency_key: nil, user_ids: nil, group_ids: nil,
                client_ids: nil, site_id: Site::CURRENT)
      # One method, no extra frame: without a subscriber (or without
      # ActiveSupport) the instrumentation costs the defined? and nothing else.
      if defined?(::ActiveSupport::Notifications) && Instrumentation.listening?("publish.spillway")
        payload = { channel: channel, event: event, async: async, idempotency_key: idempotency_key }
        handle = Instrumentation.start("publish.spillway", payload)
      end
      channel = check_channel!(channel)
      data = coerce_data(data)
      event = check_event!(event)
      key = check_idempotency_key!(idempotency_key)
      check_size!(data, event)
      targets = Targets.spec(user_ids: user_ids, group_ids: group_ids, client_ids: client_ids) if user_ids || group_ids || client_ids
      if (site = Site.resolve(site_id, @config))
        payload[:site_id] = site if handle
        channel = Site.internal(channel, site)
        # Two sites never share a key: one's publish must not swallow the other's.
        key = "#{site}#{Site::SEPARATOR}#{key}" if key
      end
      id =
        if @config.backend == :memory
          warn_forked_memory if @forked
          if key
            idempotency_cache.fetch(key) { hub.publish(channel, data, event, targets) }
          else
            hub.publish(channel, data, event, targets)
          end
        elsif async && @config.backend == :postgres
          raise Error, "async publishes are not available with the PostgreSQL backend: publish without async: " \
                       "(it returns once PostgreSQL committed)"
        elsif async
          hub.publish_async(channel, data, event, key, targets)
          nil
        else
          publisher_call { |p| p.publish(channel, data, event, key, targets) }
        end
      @lock.synchronize { @published += 1 }
      if handle
        payload[:bytes] = data.bytesize + (event ? event.bytesize : 0)
        payload[:id] = id
        handle.finish
      end
      id
    rescue Exception => e # rubocop:disable Lint/RescueException
      Instrumentation.failed(handle, payload, e) if handle
      raise
    end

    # A token that opens a stream on exactly these channels (a name or an
    # Array of names) for expires_in seconds, with no authorize callback:
    # GET <mount>?token=TOKEN. Needs Spillway.configure(secret:) (in Rails:
    # derived from secret_key_base). Every process with the same secret
    # accepts it; changing the secret revokes every token.
    # site_id: the site whose streams the token opens (multisite; by default
    # the configured site_id proc's answer): a middleware whose site_id
    # answers otherwise refuses it.
    def sign(channels, expires_in: 3600, site_id: Site::CURRENT)
      secret = @config.secret or raise Error, "Spillway.sign needs a secret: Spillway.configure(secret: ...) " \
                                             "(at least 32 bytes; Rails derives one from secret_key_base)"
      Token.sign(channels, expires_in: expires_in, secret: secret, config: @config,
                           site: Site.resolve(site_id, @config))
    end

    # The id of the newest message published so far in the namespace (Redis)
    # or process (memory): the cursor for "from now on". A page that renders
    # state and then opens its stream with ?lastEventId=<cursor> misses
    # nothing published in between.
    def cursor
      if @config.backend == :memory
        hub.cursor
      else
        publisher_call(&:cursor)
      end
    end

    # Subscribes this process to channel: the block gets every message
    # published on it after last_id (the backlog first, then live), as a
    # Spillway::Message (channel, data, id, event), in order, once, on the
    # process's subscriber thread. last_id: nil is "from now on". Returns a
    # Spillway::Subscription (#unsubscribe, #last_id). A block that raises
    # is logged and the subscription goes on. When the backlog no longer
    # reaches back to the last id, on_reset gets a Spillway::Reset
    # (channel, id: where it goes on from); without on_reset it is logged.
    # Each subscription is one stream of the hub: it counts in
    # stats[:connections] and against max_connections. site_id: as for
    # publish (the site is taken now, not per message).
    def subscribe(channel, last_id: nil, on_reset: nil, site_id: Site::CURRENT, &block)
      channel = check_channel!(channel)
      site = Site.resolve(site_id, @config)
      raise ArgumentError, "Spillway.subscribe needs a block" unless block
      raise ArgumentError, "on_reset must respond to call" unless on_reset.nil? || on_reset.respond_to?(:call)

      cursor = check_cursor!(last_id, "last_id")
      # "From now on" is the current cursor: a stream opened again later
      # (the hub restarted) then resumes from there and misses nothing.
      cursor ||= begin
        self.cursor
      rescue Error => e
        warn_once(:subscribe_cursor, "Spillway.subscribe: no cursor to start from (#{e.message}); starting from " \
                                     "whatever the hub sees first")
        nil
      end
      sub = Subscription.new(channel, cursor, block, on_reset, Site.internal(channel, site))
      Subscriber.add(sub)
      sub
    end

    # The messages of channel after since (an id: a message's, a reset's or
    # Spillway.cursor's), oldest first, as Spillway::Message, up to now.
    # Raises Spillway::ResetError when the backlog no longer reaches back to
    # since. One answer of the hub (a poll) per 1 MiB of frames. site_id:
    # as for publish.
    def backlog(channel, since:, site_id: Site::CURRENT)
      channel = check_channel!(channel)
      name = Site.internal(channel, Site.resolve(site_id, @config))
      cursor = check_cursor!(since, "since")
      raise ArgumentError, "since: must be an id (Spillway.cursor is \"now\")" if cursor.nil?

      out = []
      # A frame is at most its data (each line with "data: ") and a few
      # fields: an answer that long may have been cut short.
      room = Native::Hub::POLL_BODY_MAX - (7 * @config.max_message_bytes + 1024)
      loop do
        before = out.size
        bytes = poll_answer(name, cursor) do |frame|
          raise ResetError.new(channel, frame.id) if frame.channel.nil? && frame.event == "reset"

          out << Message.new(frame.channel, frame.data.force_encoding(Encoding::UTF_8), frame.id, frame.event)
        end
        break if bytes <= room || out.size == before

        cursor = out.last.id
      end
      out
    end

    # The id of the newest message of channel its backlog holds (Redis: in
    # the namespace; memory: in this process), or nil when there is none.
    # site_id: as for publish.
    def last_id(channel, site_id: Site::CURRENT)
      channel = Site.internal(check_channel!(channel), Site.resolve(site_id, @config))
      if @config.backend == :memory
        # A publish returns before the loop took it: an answer of the loop
        # comes after every publish made before it.
        poll_answer(channel, nil) { nil }
        hub.last_id(channel)
      else
        publisher_call { |p| p.last_id(channel) }
      end
    end

    def publish_async(channel, data, event: nil, idempotency_key: nil, **targets_and_site)
      publish(channel, data, event: event, async: true, idempotency_key: idempotency_key, **targets_and_site)
    end

    # Waits until every async publish made before the call is finished.
    # true when all of them (and any since the last flush) reached Redis;
    # false when one failed (stats[:async_failed], stats[:last_error]) or
    # timeout seconds passed first.
    def flush(timeout: 5)
      h = @lock.synchronize { check_pid!; @hub }
      return true if h.nil? || @config.backend == :memory

      h.flush(timeout)
    end

    # Counters of this process. Starts nothing.
    def stats
      h, published = @lock.synchronize do
        check_pid!
        [@hub, @published]
      end
      base = {
        backend: @config.backend, pid: Process.pid, running: !h.nil?, published: published,
        connections: 0, channels: 0, delivered: 0, dropped_slow: 0, bytes_out: 0, fallback_streams: 0,
        long_polls: 0, polls_answered: 0
      }
      base.merge!(h.stats) if h
      base[:publisher] = @publisher.stats if @publisher
      base
    end

    # The busiest channels of this process, for a dashboard: up to limit
    # (at most 100) hashes { name:, subscribers:, messages:, messages_per_s:,
    # deliveries_per_s: } (and site_id: for a site's channel, whose name: is
    # the public one), most deliveries per second first (messages per
    # second over the last 10 to 20 s, times the streams of this process on
    # the channel). Starts nothing: [] when the hub is not running. Walks
    # every channel while the native loop waits: not for a hot path.
    def busiest_channels(limit = 10)
      h = @lock.synchronize { check_pid!; @hub }
      return [] if h.nil?

      h.busiest_channels(Integer(limit)).each do |c|
        c[:deliveries_per_s] = c[:messages_per_s] * c[:subscribers]
        name, site = Site.split(c[:name])
        c.merge!(name: name, site_id: site) if site
      end
    end

    # Stops the native hub: every stream gets a last retry hint and is
    # closed, the thread exits. Also runs at exit. The hub starts again on
    # the next stream or publish.
    def shutdown(timeout: 2.0)
      # Subscriptions end first: their thread would open them again.
      Subscriber.close_all(timeout)
      @lock.synchronize do
        check_pid!
        stop_native(timeout)
      end
      nil
    end

    # Call in a forked child (Puma's on_worker_boot, Unicorn's after_fork)
    # if you like to be explicit; Spillway notices forks on its own.
    def after_fork
      @lock = Mutex.new
      forget_native!
      nil
    end

    # The native hub of this process, started on first use.
    def hub
      @lock.synchronize do
        check_pid!
        @hub ||= start_hub
      end
    end

    # Logs a message once per key (fallbacks, degraded modes).
    def warn_once(key, message)
      first = @lock.synchronize { @warned[key] ? false : (@warned[key] = true) }
      logger.warn(message) if first
    end

    # Used by the Process._fork hook: the child starts from scratch.
    def forked!
      after_fork
      @forked = true
    end

    private

    def warn_forked_memory
      warn_once(:forked_memory,
                "Spillway: publishing with the in-process memory backend in a forked process (pid #{Process.pid}): " \
                "only streams of this very process receive it. Configure redis_url to reach the app's processes.")
    end

    def current_settings
      Configuration::SETTINGS.keys.to_h { |k| [k, @config.public_send(k)] }
    end

    def check_pid!
      return if @pid == Process.pid

      forget_native!
    end

    # In a fork child: the parent's hub is not ours (its descriptors were
    # closed by the native atfork handler); drop the references.
    def forget_native!
      Subscriber.forked!
      @hub = nil
      @idempotency = nil
      @log_thread = nil # the parent's: no thread of it lives here
      @events_thread = nil
      @publisher&.abandon
      @publisher = nil
      @pid = Process.pid
      @published = 0
    end

    # verify: false is for a Redis whose certificate cannot be checked
    # (some managed services): said once per process, at the first use.
    # Called with @lock held (warn_once takes it).
    def warn_insecure_tls
      return if !@config.redis_tls_insecure? || @warned[:redis_tls_verify]

      @warned[:redis_tls_verify] = true
      logger.warn("Spillway: redis_tls verify: false: the Redis server's certificate and name are not checked " \
                  "(the connection is encrypted, but anyone on the path can pose as Redis)")
    end

    def start_hub
      warn_insecure_tls
      h = Native::Hub.new(@config.native_options)
      @log_thread = start_log_thread(h)
      @events_thread = Instrumentation.start_events(h) if defined?(::ActiveSupport::Notifications)
      install_at_exit
      h
    end

    def stop_native(timeout)
      if @hub
        unless (stopped = @hub.stop(timeout))
          logger.warn("Spillway: the native hub did not stop within #{timeout}s; left to finish on its own")
        end
        # A stopped hub hands the threads what is left and ends their waits.
        stop_log_thread(stopped ? timeout : 0)
        Instrumentation.stop_events(@events_thread, stopped ? timeout : 0)
        @events_thread = nil
        @hub = nil
      end
      # The memory backend's keys belong to the hub that published them.
      @idempotency = nil
      @publisher&.close
      @publisher = nil
    end

    # The hub's errors and resets reach the logger through this thread: the
    # native thread never calls Ruby. It sleeps in the hub without the GVL
    # until an entry is due (the hub applies log_interval per kind), and
    # ends after the hub stopped and it wrote what was left.
    def start_log_thread(hub)
      thread = Thread.new do
        while (entries = hub.log_wait(3600))
          entries.each { |entry| write_log_entry(*entry) }
        end
      end
      thread.name = "spillway-log"
      thread
    end

    def stop_log_thread(timeout)
      thread = @log_thread
      @log_thread = nil
      return unless thread

      thread.kill unless thread.join(timeout)
    end

    # "Spillway: redis_link: Redis sub link: recv: connection closed by Redis
    # (12 times in the last 10s)": the count and the time it covers when the
    # entry sums up more than one occurrence, with the last one's text.
    # The last RECENT_LOG log entries this process wrote (for the dashboard):
    # [{ at:, kind:, level:, count:, message: }], oldest first.
    def recent_log
      @recent_lock.synchronize { @recent.dup }
    end
    public :recent_log

    def write_log_entry(kind, level, count, seconds, message)
      line = +"Spillway: #{kind}: #{message.scrub}"
      line << " (#{count} times in the last #{format_seconds(seconds)})" if count > 1
      @recent_lock.synchronize do
        @recent << { at: Time.now.to_f, kind: kind.to_s, level: level.to_s, count: count, message: message.scrub }
        @recent.shift while @recent.size > RECENT_LOG
      end
      logger.public_send(level, line)
    rescue StandardError => e
      # A logger that fails must not end the thread (nor lose the line).
      $stderr.puts("#{line} [Spillway.logger failed: #{e.class}: #{e.message}]")
    end

    def format_seconds(seconds)
      return "#{(seconds * 1000).round} ms" if seconds < 1
      return format("%.1fs", seconds) if seconds < 10

      "#{seconds.round}s"
    end

    # One handler for every process: in a fork child it stops the child's
    # own hub, if any (shutdown forgets an inherited one without touching it).
    def install_at_exit
      return if @at_exit_installed

      @at_exit_installed = true
      at_exit { shutdown }
    end

    def publisher_call
      p = @lock.synchronize do
        check_pid!
        @publisher ||= begin
          warn_insecure_tls
          @config.backend == :postgres ? Native::PgPublisher.new(@config.native_options) : Native::Publisher.new(@config.native_options)
        end
      end
      yield p
    end

    def check_channel!(channel)
      channel = channel.to_s if channel.is_a?(Symbol)
      unless @config.valid_channel?(channel)
        raise ArgumentError, "invalid channel name #{channel.inspect}: 1 to #{@config.max_channel_length} " \
                             "(max_channel_length) characters of A-Z a-z 0-9 _ - . : @ / = +"
      end
      channel
    end

    ID_FORMAT = /\A\d{1,20}(-\d{1,20})?\z/.freeze

    def check_cursor!(id, what)
      return nil if id.nil?

      unless id.is_a?(String) && ID_FORMAT.match?(id)
        raise ArgumentError, "invalid #{what} #{id.inspect[0, 80]}: an id like \"1700000000000-0\" or nil"
      end

      id
    end

    # One poll of the hub for channel from cursor, read to its end; yields
    # each frame; returns the bytes of the answer.
    def poll_answer(channel, cursor, &block)
      h = hub
      raise Error, "Spillway: max_connections reached" unless h.reserve

      ours, theirs = UNIXSocket.pair
      begin
        h.attach(theirs, [channel], cursor, Native::Hub::ATTACH_POLL | Native::Hub::ATTACH_CHANNEL | Native::Hub::ATTACH_ALL)
      rescue StandardError
        h.unreserve
        raise
      ensure
        theirs.close
      end
      reader = SSEReader.new(@config.max_message_bytes + 1024)
      bytes = 0
      while (chunk = ours.read(64 * 1024))
        bytes += chunk.bytesize
        reader.feed(chunk, &block)
      end
      bytes
    ensure
      ours&.close
    end

    def coerce_data(data)
      data = JSON.generate(data) if data.is_a?(Hash) || data.is_a?(Array)
      raise ArgumentError, "data must be a String (or a Hash/Array sent as JSON), got #{data.class}" unless data.is_a?(String)

      utf8 = data.encoding == Encoding::UTF_8 ? data : data.dup.force_encoding(Encoding::UTF_8)
      unless utf8.valid_encoding?
        raise ArgumentError, "data is not valid UTF-8 (SSE streams are UTF-8; send binary data base64-encoded)"
      end

      utf8
    end

    def check_event!(event)
      return nil if event.nil?

      event = event.to_s
      if event.empty? || event.bytesize > MAX_EVENT_LENGTH || event.match?(/[\r\n\0]/)
        raise ArgumentError, "invalid event name #{event.inspect}: 1 to #{MAX_EVENT_LENGTH} characters, no CR, LF or NUL"
      end

      event
    end

    def idempotency_cache
      @lock.synchronize do
        check_pid!
        @idempotency ||= IdempotencyCache.new(@config.idempotency_ttl)
      end
    end

    def check_idempotency_key!(key)
      return nil if key.nil?

      unless key.is_a?(String) && !key.empty? && key.bytesize <= MAX_IDEMPOTENCY_KEY_LENGTH && !key.b.match?(/[\r\n\0]/n)
        shown = key.is_a?(String) && key.bytesize > 64 ? "#{key.byteslice(0, 64).inspect}... (#{key.bytesize} bytes)" : key.inspect
        raise ArgumentError, "invalid idempotency_key #{shown}: a String of 1 to #{MAX_IDEMPOTENCY_KEY_LENGTH} bytes, " \
                             "no CR, LF or NUL"
      end

      key
    end

    def check_size!(data, event)
      size = data.bytesize + (event ? event.bytesize : 0)
      return if size <= @config.max_message_bytes

      raise ArgumentError, "message of #{size} bytes is over max_message_bytes (#{@config.max_message_bytes})"
    end
  end

  # Process._fork (Ruby >= 3.1) runs for every fork: fork, Process.fork,
  # Kernel#`, Process.daemon and the app servers' worker forks.
  module ForkHook
    def _fork
      pid = super
      Spillway.forked! if pid.zero?
      pid
    end
  end
  Process.singleton_class.prepend(ForkHook) if Process.respond_to?(:_fork)
end

require "spillway/railtie" if defined?(Rails::Railtie)
