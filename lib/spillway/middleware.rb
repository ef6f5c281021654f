# frozen_string_literal: true

require "socket"
require "cgi/util"
require "digest"

module Spillway
  # Rack middleware that serves Server-Sent Events streams:
  #
  #   GET /stream?channel=chat:42&channel=user:7   (Last-Event-ID: <id>)
  #
  # `transport=long-poll` holds the request in the native loop until a
  # message after the cursor exists (or long_poll_timeout passes), then
  # answers it with a complete text/event-stream body (Content-Length, the
  # same frames and ids) and closes; `transport=poll` answers at once.
  # `include=channel` adds a `channel: <name>` line to every message (for a
  # client that routes one stream's messages by channel, like spillway.js).
  #
  # identify: ->(env) { { user_id:, group_ids:, client_id: } } (or nil) gives
  # the stream an identity, matched in the native loop against messages
  # published with user_ids:/group_ids:/client_ids: (Targets); a
  # `client_id=` parameter is the client id when identify gives none. An
  # exception in identify goes to on_error (or a 500), like authorize's.
  #
  # The request thread validates, authorizes, hijacks the socket and hands a
  # copy of its descriptor to the native hub; it is free again at once.
  # Everything else passes through to the app.
  #
  # With a secret configured, a signed token opens exactly the channels it
  # names, and authorize is not called (Spillway.sign):
  #
  #   GET /stream?token=<Spillway.sign(["chat:42"], expires_in: 3600)>
  #
  # `channel=` beside a token may only narrow it; a channel the token does
  # not name, or a forged, truncated or expired token, is a 403.
  #
  #   use Spillway::Middleware, mount: "/events",
  #                           authorize: ->(env, channels) { channels.all? { |c| c.start_with?("public:") } }
  #
  # authorize(env, channels) gets the requested channel names (a frozen Array
  # of Strings) and returns:
  #
  # * true: every requested channel;
  # * false or nil: none (403);
  # * an Enumerable of channel names (Strings or Symbols: an Array, a Set, an
  #   Enumerator, anything with #each): exactly the requested channels among
  #   them, the others are dropped; none left: 403 (as for an empty Array).
  #
  # Anything else is a bug in authorize and never a grant: the request gets a
  # 500 and the log a line naming what came back. That includes an Integer or
  # a String (a single name is not a list of names) and a Hash (Enumerable,
  # but of pairs: `channels.to_h { ... }` where a select was meant), like any
  # other Enumerable whose elements are not names. An exception raised by
  # authorize (or the token check) goes to on_error(env, exception), whose
  # [status, headers, body] is the answer (report it to your error tracker
  # there); without on_error, or when it returns nil, the answer is a 500 and
  # the log gets one line. No stream is opened either way.
  class Middleware
    MAX_QUERY_BYTES = 16 * 1024
    MAX_CURSOR_BYTES = 64
    TEXT = { "content-type" => "text/plain; charset=utf-8", "cache-control" => "no-store" }.freeze
    # transport= values and their attach flags: a stream, or one answer
    # (poll: at once; long-poll: at the first message, or empty after
    # long_poll_timeout), held in the native loop like a stream.
    IDENTITY = "spillway.identity"
    TRANSPORTS = { "stream" => 0, "long-poll" => Native::Hub::ATTACH_LONG_POLL,
                   "poll" => Native::Hub::ATTACH_POLL }.freeze

    def initialize(app, mount: "/stream", authorize: nil, param: "channel", on_error: nil, identify: nil)
      raise ArgumentError, "mount must start with /" unless mount.to_s.start_with?("/")
      raise ArgumentError, "authorize must respond to #call" if authorize && !authorize.respond_to?(:call)
      raise ArgumentError, "identify must respond to #call" if identify && !identify.respond_to?(:call)
      raise ArgumentError, "on_error must respond to #call" if on_error && !on_error.respond_to?(:call)

      @on_error = on_error
      @identify = identify

      @app = app
      @mount = mount.to_s
      @authorize = authorize
      @param = param.to_s
      raise ArgumentError, "param must be a non-empty name without & = % +" if @param.empty? || @param.match?(/[&=%+]/)
      if %w[lastEventId token turbo transport include client_id].include?(@param)
        raise ArgumentError, "param #{@param.inspect} is taken (lastEventId, token, turbo, transport, include, client_id)"
      end

      @param = @param.dup.force_encoding(Encoding::UTF_8).freeze
      @param_at = /\G#{Regexp.escape(@param)}/
    end

    def call(env)
      path = env["PATH_INFO"]
      return serve(env) if path == @mount
      return client_js(env) if path.end_with?("/client.js") && path == "#{@mount}/client.js"

      @app.call(env)
    end

    # spillway.js (lib/spillway/client.js), read once: <mount>/client.js.
    CLIENT_JS = File.binread(File.expand_path("client.js", __dir__)).freeze
    CLIENT_ETAG = %("#{Digest::SHA256.hexdigest(CLIENT_JS)[0, 32]}").freeze
    CLIENT_HEADERS = { "content-type" => "text/javascript; charset=utf-8", "etag" => CLIENT_ETAG,
                       "cache-control" => "public, max-age=3600" }.freeze

    private

    # GET or HEAD <mount>/client.js: the browser client, 304 when the
    # browser's copy (If-None-Match) is this one.
    def client_js(env)
      method = env["REQUEST_METHOD"]
      return text(405, "#{method} is not allowed here\n", "allow" => "GET, HEAD") unless %w[GET HEAD].include?(method)

      tags = env["HTTP_IF_NONE_MATCH"].to_s.split(",").map { |t| t.strip.delete_prefix("W/") }
      return [304, CLIENT_HEADERS.dup, []] if tags.include?(CLIENT_ETAG) || tags.include?("*")

      headers = CLIENT_HEADERS.merge("content-length" => CLIENT_JS.bytesize.to_s)
      [200, headers, method == "HEAD" ? [] : [CLIENT_JS]]
    end

    def serve(env)
      method = env["REQUEST_METHOD"]
      return text(405, "#{method} is not allowed here: streams are opened with GET\n", "allow" => "GET") unless method == "GET"

      query = env["QUERY_STRING"].to_s
      return text(414, "query string longer than #{MAX_QUERY_BYTES} bytes\n") if query.bytesize > MAX_QUERY_BYTES
      return text(400, "malformed query string: not ASCII\n") unless query.ascii_only?

      config = Spillway.config
      max = config.max_channels_per_connection
      channels = []
      cursor = token = turbo = transport = include = client_id = nil
      tokens = turbos = 0
      scan_query(query) do |name, value|
        case name
        when :channel
          next if channels.include?(value)

          channels << value
          # One past the limit is enough to refuse; the rest of a hostile
          # query is not read.
          break if channels.size > max
        when :cursor then cursor ||= value
        when :transport then transport ||= value
        when :include then include ||= value
        when :client_id then client_id ||= value
        when :token
          tokens += 1
          token ||= value
        else
          turbos += 1
          turbo ||= value
        end
      end
      if channels.size > max
        return text(400, "more than #{max} channels requested; max_channels_per_connection is #{max}\n")
      end

      flags = TRANSPORTS.fetch(transport || "stream") do
        return text(400, "unknown transport #{transport[0, 32].inspect}: use one of #{TRANSPORTS.keys.join(', ')}\n")
      end
      case include
      when nil, "" then nil
      when "channel" then flags |= Native::Hub::ATTACH_CHANNEL
      else return text(400, "unknown include #{include[0, 32].inspect}: the one allowed value is channel\n")
      end
      if client_id && !client_id.match?(Targets::ID)
        return text(400, "invalid client_id: 1 to 128 characters of A-Z a-z 0-9 _ . @ : + / -\n")
      end
      if @identify || client_id
        # The stream's identity (Targets.identity), for open_stream.
        env[IDENTITY] = begin
          Targets.identity(@identify&.call(env), client_id)
        rescue StandardError => e
          return failed(env, e, "identify")
        end
      end
      cursor = env["HTTP_LAST_EVENT_ID"] || cursor
      cursor = nil if cursor&.empty?
      return text(400, "Last-Event-ID longer than #{MAX_CURSOR_BYTES} bytes\n") if cursor && cursor.bytesize > MAX_CURSOR_BYTES

      # Without a secret (or Turbo) a `token` (`turbo`) parameter is the
      # app's own business: its authorize may read it.
      token = nil unless config.secret
      turbo = nil unless Turbo.enabled?
      return text(400, "a stream token and a Turbo stream name together\n") if token && turbo
      return serve_token(env, config, token, tokens, channels, cursor, flags) if token
      return serve_turbo(env, config, turbo, turbos, channels, cursor, flags) if turbo

      return text(400, "no channel given: use ?#{@param}=NAME (repeat for several)\n") if channels.empty?

      bad = channels.find { |c| !config.valid_channel?(c) }
      if bad
        return text(400, "invalid channel name #{bad[0, 64].inspect}: 1 to #{config.max_channel_length} " \
                         "characters of A-Z a-z 0-9 _ - . : @ / = +\n")
      end

      if @authorize
        allowed = begin
          @authorize.call(env, channels.dup.freeze)
        rescue StandardError => e
          return failed(env, e, "authorize")
        end
        channels = granted(channels, allowed)
        return text(500, "authorization failed: server error\n") unless channels
        return text(403, "not allowed\n") if channels.empty?
      end
      open_stream(env, config, channels, cursor, flags)
    end

    # A signed token (Spillway.sign) opens exactly its channels, without
    # authorize; `param=` beside it may only narrow them.
    def serve_token(env, config, token, tokens, requested, cursor, flags)
      return text(400, "more than one stream token\n") if tokens > 1

      allowed = begin
        Token.verify(token, secret: config.secret, config: config)
      rescue Token::Invalid => e
        return text(403, "stream token refused: #{e.message}\n")
      rescue StandardError => e
        return failed(env, e, "the stream token check")
      end
      narrowed(env, config, allowed, requested, cursor, "the stream token", flags)
    end

    # A Turbo signed stream name (turbo_stream_from) opens its one channel,
    # without authorize: Turbo's signature is the grant.
    def serve_turbo(env, config, signed, count, requested, cursor, flags)
      return text(400, "more than one Turbo stream name\n") if count > 1

      name = begin
        Turbo.verified_stream_name(signed)
      rescue StandardError => e
        return failed(env, e, "the Turbo stream name check")
      end
      return text(403, "Turbo stream name refused: bad signature\n") unless name

      narrowed(env, config, [Turbo.channel_for(name)], requested, cursor, "the Turbo stream name",
               Native::Hub::ATTACH_TURBO | flags)
    end

    # The granted channels, or the requested ones when they are among them.
    def narrowed(env, config, allowed, requested, cursor, what, flags = 0)
      return open_stream(env, config, allowed, cursor, flags) if requested.empty?

      outside = requested.find { |c| !allowed.include?(c) }
      return text(403, "channel #{outside[0, 64].inspect} is not in #{what}\n") if outside

      open_stream(env, config, requested, cursor, flags)
    end

    # flags: Native::Hub::ATTACH_TURBO for a Turbo stream (its resets go out
    # as a Turbo refresh, the one thing a <turbo-stream-source> applies);
    # ATTACH_POLL / ATTACH_LONG_POLL for one answer instead of a stream.
    def open_stream(env, config, channels, cursor, flags = 0)
      hub = Spillway.hub
      unless hub.reserve
        retry_after = [config.retry_interval.ceil, 1].max
        return text(503, "too many open streams (max_connections #{config.max_connections_effective})\n",
                    "retry-after" => retry_after.to_s)
      end
      response = Fallback.open(env, hub, channels, cursor, flags, env[IDENTITY])
      if Instrumentation.listening?("stream_open.spillway")
        ::ActiveSupport::Notifications.instrument("stream_open.spillway", channels: channels, cursor: cursor, mount: @mount)
      end
      response
    end

    # Yields (:channel, value) for every `param=` pair of the query string,
    # (:cursor, value) for every `lastEventId=` pair, (:token, value) for
    # every `token=`, (:turbo, value) for every `turbo=`, (:transport,
    # value) for every `transport=` and (:include, value) for every
    # `include=` pair, in order, with
    # names and values decoded as URI.decode_www_form decodes them (`+` is a
    # space, `%XX` a byte, a `%` without two hex digits stays, the value is
    # UTF-8 with invalid bytes replaced). Only the yielded values are
    # allocated: a stream's request is read without building every pair.
    # One pass: the next `%` and `+` are looked up only once passed.
    def scan_query(query)
      len = query.bytesize
      pct = query.index("%") || len
      plus = query.index("+") || len
      pos = 0
      while pos <= len
        amp = query.index("&", pos) || len
        pct = query.index("%", pos) || len if pct < pos
        plus = query.index("+", pos) || len if plus < pos
        eq = query.index("=", pos)
        eq = amp if eq.nil? || eq > amp # a name alone: its value is ""
        name = pct < eq || plus < eq ? decoded_name(query.byteslice(pos, eq - pos)) : literal_name(query, pos, eq)
        if name
          value = eq < amp ? query.byteslice(eq + 1, amp - eq - 1) : +""
          value = pct < amp || plus < amp ? decode_component(value) : value.force_encoding(Encoding::UTF_8)
          value.scrub!
          yield name, value
        end
        pos = amp + 1
      end
    end

    CURSOR_AT = /\GlastEventId/
    TOKEN_AT = /\Gtoken/
    TURBO_AT = /\Gturbo/
    TRANSPORT_AT = /\Gtransport/
    INCLUDE_AT = /\Ginclude/
    CLIENT_ID_AT = /\Gclient_id/
    private_constant :CURSOR_AT, :TOKEN_AT, :TURBO_AT, :TRANSPORT_AT, :INCLUDE_AT, :CLIENT_ID_AT

    # :channel, :cursor, :token, :turbo, :transport or nil for the unescaped pair name
    # query[from...eq].
    def literal_name(query, from, eq)
      if eq - from == @param.bytesize && @param_at.match?(query, from) then :channel
      elsif eq - from == 11 && CURSOR_AT.match?(query, from) then :cursor
      elsif eq - from == 5 && TOKEN_AT.match?(query, from) then :token
      elsif eq - from == 5 && TURBO_AT.match?(query, from) then :turbo
      elsif eq - from == 9 && TRANSPORT_AT.match?(query, from) then :transport
      elsif eq - from == 7 && INCLUDE_AT.match?(query, from) then :include
      elsif eq - from == 9 && CLIENT_ID_AT.match?(query, from) then :client_id
      end
    end

    def decoded_name(raw)
      name = decode_component(raw)
      if name == @param then :channel
      elsif name == "lastEventId" then :cursor
      elsif name == "token" then :token
      elsif name == "turbo" then :turbo
      elsif name == "transport" then :transport
      elsif name == "include" then :include
      elsif name == "client_id" then :client_id
      end
    end

    # `+` and `%XX` decoded (a `%` without two hex digits stays), as UTF-8.
    # CGI.unescape does it in C, but leaves a `+` right after such a `%`: the
    # `+`s go first.
    def decode_component(str)
      str = str.tr("+", " ") if str.include?("+")
      CGI.unescape(str, Encoding::UTF_8)
    end

    # The requested channels that authorize's answer grants, in request
    # order; nil (and a log line) when the answer is not one authorize may
    # give (see the class comment).
    def granted(channels, allowed)
      return channels if true.equal?(allowed)
      return [] if allowed.nil? || false.equal?(allowed)

      return refuse_authorize(allowed.class.to_s) if !allowed.respond_to?(:each) || allowed.respond_to?(:each_pair)

      names = {}
      allowed.each do |name|
        return refuse_authorize("#{allowed.class} holding a #{name.class}") unless name.is_a?(String) || name.is_a?(Symbol)

        names[name.to_s] = true
      end
      channels.select { |c| names.key?(c) }
    end

    # An exception in authorize or the token check: on_error's answer, or a
    # 500 and one log line. Either way no stream is opened and the server
    # keeps the connection (nothing was hijacked).
    def failed(env, error, where)
      if @on_error
        begin
          answer = @on_error.call(env, error)
          return answer if answer
        rescue StandardError => e
          Spillway.logger.error("Spillway: on_error for #{@mount} raised #{e.class}: #{e.message}")
        end
      end
      Spillway.logger.error("Spillway: #{where} for #{@mount} raised #{error.class}: #{error.message} " \
                            "(#{error.backtrace&.first}); answered 500, no stream opened")
      text(500, "authorization failed: server error\n")
    end

    def refuse_authorize(what)
      Spillway.logger.error("Spillway: authorize for #{@mount} returned #{what}; expected true, false, nil or an " \
                            "Enumerable of channel names (Strings or Symbols). Answered 500, no stream opened.")
      nil
    end

    def text(status, body, extra = {})
      [status, TEXT.merge(extra).merge("content-length" => body.bytesize.to_s), [body]]
    end
  end
end
