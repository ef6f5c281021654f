# frozen_string_literal: true

module Spillway
  # Rails integration: the logger, and settings from config.spillway.
  #
  #   # config/application.rb
  #   config.middleware.use Spillway::Middleware
  #   config.spillway.heartbeat = 20          # any Spillway.configure setting
  class Railtie < ::Rails::Railtie
    config.spillway = ActiveSupport::OrderedOptions.new

    initializer "spillway.configure" do |app|
      settings = app.config.spillway.to_h.slice(*Configuration::SETTINGS.keys, *Configuration::ALIASES.keys)
      settings[:logger] ||= Rails.logger unless Spillway.config.logger
      Spillway.configure(**settings) unless settings.empty?
    end
  end
end
