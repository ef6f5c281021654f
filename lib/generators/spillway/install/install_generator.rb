# frozen_string_literal: true

require "rails/generators"
require "spillway"

module Spillway
  module Generators
    # bin/rails generate spillway:install
    #
    # Writes config/initializers/spillway.rb (every setting, commented, with
    # its default), puts Spillway::Middleware into config/application.rb,
    # adds the fork hooks to config/puma.rb, and prints the nginx lines a
    # proxy in front needs. Running it again changes nothing.
    class InstallGenerator < ::Rails::Generators::Base
      source_root File.expand_path("templates", __dir__)
      desc "Sets up Spillway: an initializer, the middleware, Puma's fork hooks, and the nginx snippet."

      class_option :mount, type: :string, default: "/stream", desc: "where streams are opened"

      MIDDLEWARE = "config.middleware.use Spillway::Middleware"
      PUMA_HOOKS = <<~RUBY

        # Spillway: each worker starts its own native hub (forks are also noticed
        # on their own) and says goodbye to its streams when it stops.
        on_worker_boot { Spillway.after_fork if defined?(Spillway) }
        on_worker_shutdown { Spillway.shutdown if defined?(Spillway) }
      RUBY
      NGINX = <<~NGINX
        # nginx in front of the app: streams must not be buffered or cut short.
        location #{'%<mount>s'} {
          proxy_pass http://app;            # your upstream
          proxy_http_version 1.1;
          proxy_set_header Connection "";
          proxy_buffering off;              # Spillway also sends X-Accel-Buffering: no
          proxy_cache off;
          proxy_read_timeout 1h;            # longer than the heartbeat (15 s)
        }
      NGINX

      def initializer_file
        template "spillway.rb.tt", "config/initializers/spillway.rb"
      end

      def middleware
        app = File.join(destination_root, "config/application.rb")
        return say_status(:skip, "config/application.rb not found", :yellow) unless File.exist?(app)
        return say_status(:identical, "config/application.rb (Spillway::Middleware)", :blue) if File.read(app).include?("Spillway::Middleware")

        line = options[:mount] == "/stream" ? MIDDLEWARE : "#{MIDDLEWARE}, mount: #{options[:mount].inspect}"
        environment "#{line}\n    # config.spillway.turbo_streams = true # Turbo Streams over Spillway (turbo-rails)"
      end

      def puma_hooks
        puma = File.join(destination_root, "config/puma.rb")
        return say_status(:skip, "config/puma.rb not found", :yellow) unless File.exist?(puma)
        return say_status(:identical, "config/puma.rb (Spillway hooks)", :blue) if File.read(puma).include?("Spillway.after_fork")

        append_to_file "config/puma.rb", PUMA_HOOKS
      end

      def nginx_snippet
        say "\nBehind nginx, give the stream location these lines:\n\n#{format(NGINX, mount: options[:mount])}"
      end

      private

      # The settings with their defaults, for the template.
      def settings
        Spillway::Configuration::SETTINGS.map do |key, default|
          value = case key
                  when :redis_url then 'ENV["REDIS_URL"]'
                  when :logger then "Rails.logger"
                  when :secret then "derived from secret_key_base"
                  when :max_connections then "open-file limit - 256"
                  else default.inspect
                  end
          [key, value]
        end
      end
    end
  end
end
