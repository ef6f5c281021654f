# frozen_string_literal: true

# A one-page chat on plain Rack. Run it with `examples/run rack` (see README.md).
#
#   GET  /                 the page (index.html)
#   GET  /stream?channel=chat:lobby   the SSE stream (Spillway::Middleware)
#   POST /messages         user=...&text=...  -> publishes on chat:lobby
#   GET  /history          the last 50 messages + the id to resume the stream from

require "json"
require "time"
require "rack"
require "spillway"

# nil (no REDIS_URL): the in-process memory backend.
Spillway.configure(redis_url: ENV["REDIS_URL"])

class Chat
  CHANNEL = "chat:lobby"
  HISTORY_SIZE = 50
  MAX_USER = 32
  MAX_TEXT = 500
  MAX_BODY = 4096
  INDEX = File.read(File.join(__dir__, "index.html")).freeze

  def initialize
    @lock = Mutex.new
    @history = [] # [{id:, user:, text:, at:}], oldest first
  end

  def call(env)
    req = Rack::Request.new(env)
    case [req.request_method, req.path_info]
    in ["GET" | "HEAD", "/"] then [200, { "content-type" => "text/html; charset=utf-8" }, [INDEX]]
    in ["GET", "/history"] then json(200, history)
    in ["POST", "/messages"] then post(req)
    in ["GET", "/stats"] then json(200, Spillway.stats)
    in [_, "/" | "/history" | "/messages"] then json(405, { error: "method not allowed" })
    else json(404, { error: "not found" })
    end
  end

  private

  def post(req)
    return json(413, { error: "request body over #{MAX_BODY} bytes" }) if req.content_length.to_i > MAX_BODY

    user, text = read_message(req)
    error = validate(user, text)
    return json(400, { error: error }) if error

    message = { user: user, text: text, at: Time.now.utc.iso8601(3) }
    # Publish first: the id is Spillway's, and the same id marks the entry
    # in our history, so the page can drop duplicates.
    id = Spillway.publish(CHANNEL, message, event: "message")
    remember(message.merge(id: id))
    json(201, { id: id })
  rescue JSON::ParserError, EOFError, Rack::QueryParser::InvalidParameterError, Rack::QueryParser::ParameterTypeError
    json(400, { error: "malformed body" })
  end

  # Form-encoded (the page, curl -d) or JSON.
  def read_message(req)
    if req.media_type == "application/json"
      body = JSON.parse(req.body.read(MAX_BODY + 1).to_s)
      raise JSON::ParserError, "not an object" unless body.is_a?(Hash)

      [body["user"], body["text"]]
    else
      [req.POST["user"], req.POST["text"]]
    end
  end

  def validate(user, text)
    return "user and text are required" unless user.is_a?(String) && text.is_a?(String)
    return "user and text must be UTF-8" unless user.valid_encoding? && text.valid_encoding?

    user.strip!
    text.strip!
    return "user must be 1 to #{MAX_USER} characters" unless (1..MAX_USER).cover?(user.length)
    return "text must be 1 to #{MAX_TEXT} characters" unless (1..MAX_TEXT).cover?(text.length)
    return "user must be on one line" if user.match?(/[[:cntrl:]]/)
    return "text may not contain control characters" if text.match?(/[[:cntrl:]&&[^\n\t]]/)

    nil
  end

  def remember(entry)
    @lock.synchronize do
      @history << entry
      # Concurrent requests can finish out of order: keep id order.
      @history.sort_by! { |m| id_key(m[:id]) }
      @history.shift while @history.size > HISTORY_SIZE
    end
  end

  # The page loads this, then opens the stream with lastEventId = last_id:
  # whatever is published in between is replayed by Spillway, not lost.
  # (With no message yet there is no id to resume from; the page then
  # reloads history once the stream is open.)
  # With REDIS_URL and several app processes each one only remembers what it
  # published itself; a real app keeps history in its database.
  def history
    @lock.synchronize { { messages: @history.dup, last_id: @history.last&.dig(:id) } }
  end

  # "<ms>-<seq>" -> [ms, seq]: ids sort by time, then sequence.
  def id_key(id)
    id.to_s.split("-", 2).map(&:to_i)
  end

  def json(status, body)
    [status, { "content-type" => "application/json", "cache-control" => "no-store" }, [JSON.generate(body)]]
  end
end

use Spillway::Middleware # GET /stream?channel=chat:lobby
run Chat.new
