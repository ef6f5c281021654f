# frozen_string_literal: true

module Spillway
  VERSION = "0.1.0"
end
