# frozen_string_literal: true

Rails.application.routes.draw do
  root "messages#index"
  resources :messages, only: :create
  # Turbo's JavaScript, straight from the turbo-rails gem (no asset pipeline
  # in this small app).
  turbo_js = Turbo::Engine.root.join("app/assets/javascripts/turbo.min.js").read.freeze
  get "/turbo.js", to: lambda { |_env|
    [200, { "content-type" => "text/javascript", "cache-control" => "public, max-age=3600" }, [turbo_js]]
  }
  # Prometheus text of Spillway's numbers (protect it in a real app).
  mount Spillway::Metrics => "/metrics"

  # What the suite's server harness asks (spec/integration/turbo_spec.rb).
  if ENV["SPILLWAY_TEST"]
    get "/ping", to: ->(_env) { [200, { "content-type" => "text/plain" }, ["pong"]] }
    get "/stats", to: ->(_env) { [200, { "content-type" => "application/json" }, [JSON.generate(Spillway.stats)]] }
    get "/facts", to: lambda { |_env|
      [200, { "content-type" => "application/json" }, [JSON.generate(action_cable: defined?(ActionCable) ? true : false)]]
    }
  end
end
