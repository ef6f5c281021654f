# frozen_string_literal: true

require "digest"
require "cgi/util"

module Spillway
  # Turbo Streams over Spillway instead of Action Cable (turbo-rails 2.x):
  #
  #   # config/application.rb
  #   config.spillway.turbo_streams = true        # the Railtie does the rest
  #
  # * `turbo_stream_from @room` renders `<turbo-stream-source src="/stream?turbo=SIGNED&lastEventId=ID">`:
  #   Turbo opens an EventSource on it and applies every <turbo-stream> that
  #   arrives. SIGNED is Turbo's own signed stream name; the cursor is the
  #   newest id when the page was rendered, so a broadcast between render and
  #   connect still arrives.
  # * The middleware verifies SIGNED with Turbo's verifier and streams the
  #   channel of that stream name, without authorize (the signature is the
  #   grant, as with Turbo's StreamsChannel on Action Cable).
  # * Every broadcast of Turbo::StreamsChannel (broadcast_*_to, the *_later_to
  #   jobs, the model callbacks broadcasts_to / broadcasts /
  #   broadcasts_refreshes) ends in Spillway.publish on that channel.
  #
  # Works in an app that never loads Action Cable: the Railtie then defines
  # Turbo::StreamsChannel itself, with Turbo's own broadcasting and naming
  # modules and no channel class under it.
  module Turbo
    PREFIX = "turbo:"
    # A cursor Turbo's EventSource carries on; the rest is Turbo's business.
    @mount = "/stream"
    @enabled = false

    class << self
      attr_accessor :mount
      attr_writer :enabled

      def enabled?
        @enabled && defined?(::Turbo) && ::Turbo.respond_to?(:signed_stream_verifier)
      end

      # The Spillway channel of a Turbo stream name: "turbo:<name>" when that
      # is a valid channel name, else "turbo:sha256:<hex>" (Turbo names come
      # from to_param and may hold anything).
      def channel_for(stream_name)
        name = "#{PREFIX}#{stream_name}"
        Spillway.config.valid_channel?(name) ? name : "#{PREFIX}sha256:#{Digest::SHA256.hexdigest(stream_name.to_s)}"
      end

      # The stream name a signed one (Turbo's verifier) stands for, or nil.
      def verified_stream_name(signed)
        name = ::Turbo.signed_stream_verifier.verified(signed)
        name.is_a?(String) && !name.empty? ? name : nil
      rescue ArgumentError, TypeError, JSON::ParserError
        nil
      end

      # The src of a <turbo-stream-source> for the signed stream name.
      def src(signed, cursor = Spillway.cursor)
        src = +"#{mount}?turbo=#{CGI.escape(signed)}"
        src << "&lastEventId=#{CGI.escape(cursor)}" if cursor
        src
      end
    end

    # Prepended to Turbo::Streams::Broadcasts: where Turbo would hand the
    # content to ActionCable.server.broadcast.
    module Broadcasting
      def broadcast_stream_to(*streamables, content:)
        streamables.flatten!
        streamables.compact_blank!
        return if streamables.empty?

        Spillway.publish(Spillway::Turbo.channel_for(stream_name_from(streamables)), content.to_str)
      end
    end

    # Prepended to Turbo::StreamsHelper.
    module StreamsHelper
      def turbo_stream_from(*streamables, **attributes)
        raise ArgumentError, "streamables can't be blank" unless streamables.any?(&:present?)

        signed = ::Turbo::StreamsChannel.signed_stream_name(streamables)
        attributes.delete(:channel) # an Action Cable channel class: not used here
        tag.turbo_stream_source(src: Spillway::Turbo.src(signed), **attributes)
      end
    end
  end
end
