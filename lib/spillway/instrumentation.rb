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
  #
  # Every event is instrumented on a Ruby thread; the native thread never
  # calls Ruby.
  module Instrumentation
    module_function

    def listening?(name)
      defined?(::ActiveSupport::Notifications) && ::ActiveSupport::Notifications.notifier.listening?(name)
    end

    # Yields the payload to fill in; instrumented when someone listens.
    def instrument(name, payload)
      return yield(payload) unless listening?(name)

      ::ActiveSupport::Notifications.instrument(name, payload) { yield payload }
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

    Finished = Struct.new(:name, :payload) do
      def finish
        ::ActiveSupport::Notifications.instrument(name, payload)
      end
    end
  end
end
