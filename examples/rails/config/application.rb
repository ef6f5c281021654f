# frozen_string_literal: true

require_relative "boot"

require "rails"
# Only what this app uses: no Active Record (no database), mailer, jobs, cable...
require "action_controller/railtie"
require "action_view/railtie"

Bundler.require(*Rails.groups) # loads spillway

require_relative "../lib/recent_messages"

module Board
  class Application < Rails::Application
    config.load_defaults 7.2
    config.eager_load = Rails.env.production?
    config.logger = ActiveSupport::TaggedLogging.new(ActiveSupport::Logger.new($stdout))
    config.log_level = :info
    config.secret_key_base = ENV.fetch("SECRET_KEY_BASE") { SecureRandom.hex(64) } if Rails.env.production?

    # GET /stream?channel=board -> an SSE stream served by Spillway's native
    # thread; the Puma thread that took the request is free within a
    # millisecond. `use` puts it after Rails' cookie and session middleware,
    # so an authorize lambda can read env["rack.session"] if it needs to.
    config.middleware.use Spillway::Middleware,
                          authorize: ->(_env, channels) { channels.all? { |c| c == AnnouncementsController::CHANNEL } }

    # The last 50 announcements, kept in this process (a real app: the database).
    config.x.announcements = RecentMessages.new(50)
  end
end
