# frozen_string_literal: true

# Run with `examples/run sinatra` (see README.md).
require_relative "app"

run ChatApp
