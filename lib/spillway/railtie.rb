# frozen_string_literal: true

module Spillway
  # Rails integration: the logger, the secret that signs stream tokens (from
  # secret_key_base), and settings from config.spillway.
  #
  #   # config/application.rb
  #   config.middleware.use Spillway::Middleware
  #   config.spillway.heartbeat = 20          # any Spillway.configure setting
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
  end
end
