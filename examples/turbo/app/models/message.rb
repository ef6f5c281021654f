# frozen_string_literal: true

class Message < ApplicationRecord
  validates :body, presence: true, length: { maximum: 500 }

  # Every page that rendered turbo_stream_from "chat" gets each new message
  # appended to #messages (and replaced / removed on update / destroy), from
  # whichever process made the change.
  broadcasts_to ->(_message) { "chat" }, inserts_by: :append, target: "messages"
end
