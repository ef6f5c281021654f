# frozen_string_literal: true

# Chat rooms on Sinatra with Spillway. Run it with `examples/run sinatra`.
#
# Every room is a channel "room:<name>"; every signed-in user also listens
# to "user:<name>", where mentions (@name) land. The stream's authorize:
# lambda lets a browser open room channels and its own user channel, and
# answers 403 for anything else.

require "json"
require "securerandom"
require "time"
require "sinatra/base"
require "spillway"

Spillway.configure(redis_url: ENV["REDIS_URL"]) # nil: in-process memory backend

class ChatApp < Sinatra::Base
  NAME = /\A[a-z0-9_-]{1,24}\z/.freeze        # user and room names
  ROOM_CHANNEL = /\Aroom:[a-z0-9_-]{1,24}\z/.freeze
  MENTION = /@([a-z0-9_-]{1,24})/.freeze
  MAX_TEXT = 500
  HISTORY_SIZE = 50

  configure do
    set :root, __dir__
    enable :sessions
    # Sinatra needs 64+ characters; a random one logs everybody out at restart.
    set :session_secret, ENV.fetch("SESSION_SECRET") { SecureRandom.hex(32) }
    set :history, {} # room -> last HISTORY_SIZE messages (a real app: the database)
    set :history_lock, Mutex.new
  end

  # The session middleware (enable :sessions) runs before this one, so the
  # lambda can read who is asking. Return true (all requested channels),
  # false (403) or an Array of the channels to keep.
  use Spillway::Middleware, authorize: lambda { |env, channels|
    user = env["rack.session"]&.[]("user")
    !user.nil? && channels.all? { |c| c.match?(ROOM_CHANNEL) || c == "user:#{user}" }
  }

  helpers do
    def h(text) = Rack::Utils.escape_html(text.to_s)
    def current_user = session["user"]

    def json(status_code, body)
      content_type :json
      halt status_code, JSON.generate(body)
    end

    def room!
      room = params["room"].to_s
      halt 404, "no such room name (a-z 0-9 _ -, up to 24)" unless room.match?(NAME)
      room
    end

    def history(room)
      settings.history_lock.synchronize { settings.history.fetch(room, []).dup }
    end

    def remember(room, entry)
      settings.history_lock.synchronize do
        list = (settings.history[room] ||= [])
        list << entry
        list.sort_by! { |m| m[:id].split("-", 2).map(&:to_i) }
        list.shift while list.size > HISTORY_SIZE
      end
    end

    def rooms
      (["lobby", @room].compact + settings.history_lock.synchronize { settings.history.keys }).uniq.sort
    end
  end

  get "/" do
    current_user ? redirect("/rooms/lobby") : erb(:login)
  end

  post "/login" do
    name = params["name"].to_s.strip.downcase
    unless name.match?(NAME)
      status 400
      @error = "Pick a name of 1 to 24 characters: a-z 0-9 _ -"
      return erb(:login)
    end
    session["user"] = name
    redirect "/rooms/lobby"
  end

  post "/logout" do
    session.clear
    redirect "/"
  end

  get "/rooms/:room" do
    redirect "/" unless current_user
    @room = room!
    erb :room
  end

  get "/rooms/:room/history" do
    json 401, { error: "sign in first" } unless current_user
    messages = history(room!)
    json 200, { messages: messages, last_id: messages.last&.dig(:id) }
  end

  post "/rooms/:room/messages" do
    json 401, { error: "sign in first" } unless current_user
    room = room!
    text = params["text"]
    json 400, { error: "text is required" } unless text.is_a?(String)
    text = text.strip
    json 400, { error: "text must be 1 to #{MAX_TEXT} characters" } unless text.valid_encoding? && (1..MAX_TEXT).cover?(text.length)
    json 400, { error: "text may not contain control characters" } if text.match?(/[[:cntrl:]&&[^\n\t]]/)

    message = { user: current_user, text: text, at: Time.now.utc.iso8601(3) }
    id = Spillway.publish("room:#{room}", message, event: "message")
    remember(room, message.merge(id: id))
    # The second channel: everyone mentioned gets a note on user:<name>.
    text.scan(MENTION).flatten.uniq.first(5).each do |name|
      next if name == current_user

      Spillway.publish("user:#{name}", { from: current_user, room: room, text: text, at: message[:at] }, event: "mention")
    end
    json 201, { id: id }
  end

  get "/stats" do
    json 200, Spillway.stats
  end
end
