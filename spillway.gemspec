# frozen_string_literal: true

require_relative "lib/spillway/version"

Gem::Specification.new do |spec|
  spec.name = "spillway"
  spec.version = Spillway::VERSION
  spec.authors = ["The Spillway authors"]
  spec.summary = "Server-Sent Events for Rack apps from a native event loop, fanned out through Redis"
  spec.description = <<~DESC
    Spillway serves tens of thousands of Server-Sent Events streams from inside a Rack app process
    (Rails, Sinatra, plain Rack on Puma) without holding request threads: a Rack middleware hijacks
    the socket and hands it to a native epoll loop. Messages published from any process go through
    Redis (or stay in-process) and reach every stream, encoded once; browsers that reconnect resume
    with Last-Event-ID without losing or repeating a message.
  DESC
  spec.license = "MIT"
  spec.homepage = "https://example.invalid/spillway"
  spec.required_ruby_version = ">= 3.0"
  spec.requirements = ["Linux (epoll)", "hiredis C library and headers (apt-get install libhiredis-dev)"]

  spec.files = Dir["lib/**/*.rb", "lib/**/*.js", "lib/**/*.tt", "ext/**/*.{c,h,rb}", "README.md", "CHANGELOG.md", "LICENSE"]
  spec.require_paths = ["lib"]
  spec.extensions = ["ext/spillway/extconf.rb"]
  spec.metadata["rubygems_mfa_required"] = "true"
end
