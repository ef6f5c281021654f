# frozen_string_literal: true

require_relative "boot"

require "rails"
# Only what this app uses. No "action_cable/engine": Turbo Streams go
# through Spillway.
require "active_record/railtie"
require "active_job/railtie"
require "action_controller/railtie"
require "action_view/railtie"

require "importmap-rails"
require "turbo-rails"
require "spillway"

module TurboChat
  class Application < Rails::Application
    config.load_defaults 7.2
    config.root = File.expand_path("..", __dir__)
    config.eager_load = Rails.env.production?
    config.logger = ActiveSupport::TaggedLogging.new(ActiveSupport::Logger.new($stdout))
    config.log_level = :info
    config.secret_key_base = ENV.fetch("SECRET_KEY_BASE") { "turbo-example-only-" * 8 }
    config.hosts.clear

    # GET /stream?turbo=... streams what turbo_stream_from asked for, from
    # Spillway's native thread; Turbo::StreamsChannel broadcasts (and the
    # broadcasts_to callbacks of Message) publish through Spillway.
    config.middleware.use Spillway::Middleware
    config.spillway.turbo_streams = true

    # Broadcast jobs (*_later_to) run in the process that made the change:
    # `bin/rails runner 'Message.create!(body: "hi")'` reaches every page.
    config.active_job.queue_adapter = :inline
  end
end
