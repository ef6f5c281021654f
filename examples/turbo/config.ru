# frozen_string_literal: true

# Run with `examples/run turbo` (see README.md), or `bundle exec puma -t 1:4 config.ru`.
require_relative "config/environment"

run Rails.application
Rails.application.load_server
