# frozen_string_literal: true

$LOAD_PATH.unshift File.expand_path("../lib", __dir__)
require "spillway"

require_relative "support/waiting"
Dir[File.join(__dir__, "support", "*.rb")].sort.each { |f| require f }

# Catch objects that do not survive compaction (msgpack-ruby, redis-client).
if GC.respond_to?(:verify_compaction_references)
  GC.verify_compaction_references(double_heap: true, toward: :empty)
end

RSpec.configure do |config|
  config.expect_with(:rspec) { |c| c.syntax = :expect }
  config.disable_monkey_patching!
  config.order = :defined
  config.include Waiting
  config.after do
    # Each example starts with a clean process-wide Spillway.
    Spillway.shutdown(timeout: 5)
    Spillway.configure(**Spillway::Configuration::SETTINGS.dup)
  end
end
