# frozen_string_literal: true

# REDIS_URL set: every process (web, console, `bin/rails runner`, jobs) reaches
# every stream. Unset: the in-process memory backend. (Spillway's Railtie has
# already pointed its logger at Rails.logger; `config.spillway.<setting> = ...`
# in config/application.rb works too.)
Spillway.configure(redis_url: ENV["REDIS_URL"])
