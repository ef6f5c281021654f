# frozen_string_literal: true

require "spec_helper"
require "open3"
require "tmpdir"

# bin/rails generate spillway:install in a fresh (minimal) Rails app, run
# twice, then the app boots with what it wrote.
RSpec.describe "bin/rails generate spillway:install" do
  def write(dir, path, text)
    FileUtils.mkdir_p(File.dirname(File.join(dir, path)))
    File.write(File.join(dir, path), text)
  end

  def app_skeleton(dir)
    write(dir, "config/boot.rb", %(require "bundler/setup"\n))
    write(dir, "config/application.rb", <<~RUBY)
      require_relative "boot"
      require "rails"
      require "action_controller/railtie"
      require "spillway"

      module Gen
        class Application < Rails::Application
          config.load_defaults 7.2
          config.eager_load = false
          config.logger = Logger.new(nil)
          config.secret_key_base = "g" * 128
          config.hosts.clear # the probe's Rack::MockRequest has no Host
        end
      end
    RUBY
    write(dir, "config/environment.rb", %(require_relative "application"\nRails.application.initialize!\n))
    write(dir, "config/puma.rb", %(workers 2\nthreads 1, 5\n))
    write(dir, "bin/rails", <<~RUBY)
      APP_PATH = File.expand_path("../config/application", __dir__)
      require_relative "../config/boot"
      require "rails/commands"
    RUBY
  end

  def run_in(dir, *args)
    env = { "BUNDLE_GEMFILE" => File.join(AppServer::ROOT, "Gemfile"), "RUBYLIB" => File.join(AppServer::ROOT, "lib") }
    out, err, status = Open3.capture3(env, RbConfig.ruby, *args, chdir: dir)
    expect(status).to be_success, "#{args.join(' ')}: #{err}#{out}"
    out
  end

  it "writes the initializer, the middleware and Puma's hooks once, prints nginx's lines, and the app boots" do
    Dir.mktmpdir("spillway-gen") do |dir|
      app_skeleton(dir)
      out = run_in(dir, "bin/rails", "generate", "spillway:install", "--mount", "/events")
      expect(out).to include("proxy_buffering off").and include("location /events")

      init = File.read(File.join(dir, "config/initializers/spillway.rb"))
      Spillway::Configuration::SETTINGS.each_key { |key| expect(init).to include("# c.#{key} = "), key.to_s }
      app = File.read(File.join(dir, "config/application.rb"))
      expect(app.scan("config.middleware.use Spillway::Middleware, mount: \"/events\"").size).to eq(1)
      puma = File.read(File.join(dir, "config/puma.rb"))
      expect(puma.scan("Spillway.after_fork").size).to eq(1)
      expect(puma).to start_with("workers 2\n")

      # Again: nothing doubled.
      run_in(dir, "bin/rails", "generate", "spillway:install", "--mount", "/events", "--skip")
      expect(File.read(File.join(dir, "config/application.rb"))).to eq(app)
      expect(File.read(File.join(dir, "config/puma.rb"))).to eq(puma)

      # The app boots with it, the middleware in its stack at /events.
      probe = run_in(dir, "-e", <<~RUBY)
        require "./config/environment"
        mw = Rails.application.middleware.find { |m| m.klass == Spillway::Middleware }
        env = Rack::MockRequest.env_for("/events")
        status, = Rails.application.call(env)
        puts [mw ? "mounted" : "missing", status].join(" ")
      RUBY
      # No channel given: the middleware answered at /events (400), not the router (404).
      expect(probe.lines.last.strip).to eq("mounted 400"), probe
      # The Puma config with the hooks still loads.
      run_in(dir, "-e", 'require "puma"; require "puma/configuration"; Puma::Configuration.new({}, {}) { |c| c.load "config/puma.rb" }.load')
    end
  end
end
