# frozen_string_literal: true

module Spillway
  # ActiveSupport::Notifications events, when ActiveSupport is loaded (as
  # in Rails); nothing is built when nobody subscribed to the event.
  #
  #   publish.spillway      { channel:, event:, bytes:, async:, idempotency_key:, id: }
  #                         on the publishing thread, around the publish (an
  #                         exception it raised is in :exception as usual)
  #   stream_open.spillway  { channels:, cursor:, mount: } on the request thread,
  #                         once the stream is handed to the hub
  #   stream_close.spillway { stream:, channels:, reason:, at: } ("client gone",
  #                         "slow (max_lag or outbox_limit)", "slow (memory_limit)",
  #                         "server stopping", ...)
  #   reset.spillway        { stream:, channels:, reason:, at: } the channels reset
  #   redis_error.spillway  { kind:, message:, at: } every occurrence (the log
  #                         sums them up; kind as in the log: redis_link, ...)
  #
  # Multisite (Spillway::Site): the events of a site's publish or stream
  # also carry site_id:, and name its channels by their public names.
  #
  # The last three come from the hub: it records them (only when
  # ActiveSupport is loaded when the hub starts) and the spillway-events
  # thread instruments them; stream is the hub's number for the stream.
  #
  # Every event is instrumented on a Ruby thread; the native thread never
  # calls Ruby.
  module Instrumentation
    module_function

    def listening?(name)
      defined?(::ActiveSupport::Notifications) && ::ActiveSupport::Notifications.notifier.listening?(name)
    end

    # An event started now and finished by the caller (handle.finish), for
    # code that cannot run inside a block without an extra frame on its hot
    # path. ActiveSupport before 7.1 has no handles: the event is then
    # reported when it finishes, with no duration.
    def start(name, payload)
      instrumenter = ::ActiveSupport::Notifications.instrumenter
      if instrumenter.respond_to?(:build_handle)
        instrumenter.build_handle(name, payload).tap(&:start)
      else
        Finished.new(name, payload)
      end
    end

    def failed(handle, payload, error)
      payload[:exception] = [error.class.name, error.message]
      payload[:exception_object] = error
      handle.finish
    end

    # The thread that turns the hub's events into notifications. It sleeps
    # in the hub without the GVL and ends once the hub stopped and it
    # delivered what was left.
    def start_events(hub)
      hub.events_enable(true)
      thread = Thread.new do
        seen_dropped = 0
        while (batch = hub.events_wait(3600))
          events, dropped = batch
          events.each { |event| deliver(*event) }
          next unless dropped > seen_dropped

          Spillway.logger.warn("Spillway: #{dropped - seen_dropped} hub events were dropped before the " \
                               "notifications thread took them (a slow subscriber?)")
          seen_dropped = dropped
        end
      end
      thread.name = "spillway-events"
      thread
    end

    def stop_events(thread, timeout)
      return unless thread

      thread.kill unless thread.join(timeout)
    end

    def deliver(kind, stream, wall_ms, reason, detail)
      at = Time.at(wall_ms / 1000.0)
      case kind
      when :stream_close, :reset
        payload = { stream: stream, channels: detail.split("\n"), reason: reason, at: at }
        site_payload!(payload)
        ::ActiveSupport::Notifications.instrument("#{kind}.spillway", payload)
      when :redis_error
        ::ActiveSupport::Notifications.instrument("redis_error.spillway", kind: reason, message: detail, at: at)
      end
    rescue StandardError => e
      # A subscriber that raises must not end the thread.
      Spillway.logger.error("Spillway: a #{kind}.spillway subscriber raised #{e.class}: #{e.message}")
    end

    # A site's stream (multisite): its channels by their public names, and
    # its site_id (a stream belongs to one site; "/global/" channels to none).
    def site_payload!(payload)
      return unless payload[:channels].any? { |c| c.include?(Site::SEPARATOR) }

      payload[:channels] = payload[:channels].map do |c|
        name, site = Site.split(c)
        payload[:site_id] ||= site
        name
      end
    end

    Finished = Struct.new(:name, :payload) do
      def finish
        ::ActiveSupport::Notifications.instrument(name, payload)
      end
    end
  end
end
