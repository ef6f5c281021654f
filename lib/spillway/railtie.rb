# frozen_string_literal: true

module Spillway
  # Rails integration: the logger, the secret that signs stream tokens (from
  # secret_key_base), settings from config.spillway, and Turbo Streams over
  # Spillway with config.spillway.turbo_streams = true (see Spillway::Turbo).
  #
  #   # config/application.rb
  #   config.middleware.use Spillway::Middleware
  #   config.spillway.heartbeat = 20          # any Spillway.configure setting
  #   config.spillway.turbo_streams = true    # turbo_stream_from and broadcasts through Spillway
  #   config.spillway.turbo_mount = "/stream" # the middleware's mount (default)
  class Railtie < ::Rails::Railtie
    config.spillway = ActiveSupport::OrderedOptions.new

    initializer "spillway.configure" do |app|
      settings = app.config.spillway.to_h.slice(*Configuration::SETTINGS.keys, *Configuration::ALIASES.keys)
      settings[:logger] ||= Rails.logger unless Spillway.config.logger
      # Stream tokens (Spillway.sign) are signed with a key of their own,
      # derived from secret_key_base like the app's other keys.
      if !settings[:secret] && !Spillway.config.secret && app.respond_to?(:key_generator)
        settings[:secret] = app.key_generator.generate_key("spillway stream tokens", 64)
      end
      Spillway.configure(**settings) unless settings.empty?
    end

    # Without Action Cable, turbo-rails's Turbo::StreamsChannel cannot load
    # (it is an Action Cable channel): its file is left to the side and
    # Spillway defines the class, with Turbo's own modules, once the
    # autoloaders run.
    initializer "spillway.turbo_without_action_cable", before: :set_eager_load_paths do |app|
      next unless turbo?(app) && !defined?(::ActionCable)

      Rails.autoloaders.once.ignore(::Turbo::Engine.root.join("app/channels/turbo/streams_channel.rb").to_s)
    end

    config.after_initialize do |app|
      next unless turbo?(app)

      Spillway::Turbo.mount = (app.config.spillway.turbo_mount || "/stream").to_s
      Spillway::Turbo.enabled = true
      unless defined?(::ActionCable)
        ::Turbo.const_set(:StreamsChannel, Class.new do
          extend ::Turbo::Streams::Broadcasts, ::Turbo::Streams::StreamName
        end)
      end
      ::Turbo::Streams::Broadcasts.prepend(Spillway::Turbo::Broadcasting)
      ::Turbo::StreamsHelper.prepend(Spillway::Turbo::StreamsHelper)
    end

    def self.turbo?(app)
      return false unless app.config.spillway.turbo_streams
      raise "config.spillway.turbo_streams needs turbo-rails (gem \"turbo-rails\")" unless defined?(::Turbo::Engine)

      true
    end

    def turbo?(app)
      self.class.turbo?(app)
    end
  end
end
