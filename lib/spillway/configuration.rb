# frozen_string_literal: true

require "uri"
require "logger"

module Spillway
  # Process-wide settings. Set them with Spillway.configure before the first
  # stream or publish; configuring again restarts the native hub (open streams
  # get a retry hint and reconnect).
  class Configuration
    # Channel names: what is safe in a URL query, a Redis key and a JSON
    # string without escaping.
    CHANNEL_PATTERN = %r{\A[A-Za-z0-9_\-.:@/=+]+\z}.freeze
    # Hard ceilings: the native hub refuses anything above them.
    MAX_CHANNEL_LENGTH_CEILING = 1024
    MAX_CHANNELS_CEILING = 1024
    MAX_MESSAGE_CEILING = 16 * 1024 * 1024

    SETTINGS = {
      # backend
      redis_url: nil,              # nil: ENV["REDIS_URL"]; still nil: the memory backend
      redis_tls: nil,              # rediss://: { ca_file:, ca_path:, cert_file:, key_file:, verify: true, server_name: }
      postgres_url: nil,           # nil: ENV["SPILLWAY_POSTGRES_URL"]; "postgres://..." or a libpq keyword string
      redis_sentinels: nil,        # ["host:26379", ...]: ask these Sentinels for the primary (redis_url: credentials, db, TLS)
      redis_sentinel_master: nil,  # the master's name the sentinels monitor (or the host of redis_url)
      sentinel_password: nil,      # AUTH to the sentinels (nil: none)
      namespace: "spillway",       # prefix of Redis keys and pub/sub channels; PostgreSQL: the schema and LISTEN channel
      # streams
      heartbeat: 15,               # seconds between heartbeat comments
      retry_interval: 2.0,         # seconds; the `retry:` hint browsers wait before reconnecting
      max_connections: nil,        # nil: open-file limit minus 256
      max_channels_per_connection: 32,
      max_channel_length: 128,
      max_message_bytes: 64 * 1024,
      outbox_limit: 512 * 1024,    # bytes of frames one stream alone may keep waiting before it is dropped
      max_lag: 10,                 # seconds a stream's oldest unsent message may wait before it is dropped
      memory_limit: 256 * 1024 * 1024, # bytes of all waiting frames; beyond, the laggiest streams are dropped
      headers: {},                 # extra response headers (e.g. CORS) on every stream
      long_poll_timeout: 25,       # seconds a long-poll (transport=long-poll) waits for a message
      secret: nil,                 # signs stream tokens (Spillway.sign); Rails: derived from secret_key_base
      site_id: nil,                # multisite: -> { current site id } for publishes, subscribes, tokens (Site)
      # backlog (both backends)
      backlog_size: 1000,          # messages kept per channel for resume
      backlog_ttl: 86_400,         # seconds a channel's backlog outlives its last message (0: forever)
      backlog_window: nil,         # seconds: a channel's backlog also drops messages older than this (nil/0: off)
      max_backlog_channels: 100_000, # memory backend: channels with a backlog (least recently used dropped)
      idempotency_ttl: 300,        # seconds a publish's idempotency_key is remembered (both backends)
      # Redis
      connect_timeout: 1.0,
      command_timeout: 1.0,
      health_interval: 5.0,        # seconds between PINGs on the subscriber link
      unsubscribe_linger: 1.0,     # seconds a channel stays subscribed after its last stream left
      async_limit: 10_000,         # async publishes waiting for Redis before publish raises
      queue_limit: 65_536,         # commands waiting for the native hub
      logger: nil,                 # nil: a Logger on $stderr
      log_interval: 10             # seconds: the hub logs a kind of error once, then sums up its repeats this often
    }.freeze

    # Old names that still work.
    ALIASES = {
      # A stream used to be dropped after write_timeout seconds without
      # write progress; lag covers that (a stream that makes no progress
      # lags) and also a stream that makes progress but falls behind.
      write_timeout: :max_lag
    }.freeze

    attr_reader(*SETTINGS.keys)

    def initialize(**options)
      SETTINGS.each { |key, value| instance_variable_set(:"@#{key}", value.dup) }
      update(**options)
    end

    def update(**options)
      options.each do |key, value|
        key = ALIASES.fetch(key, key)
        raise ArgumentError, "unknown Spillway setting #{key.inspect} (known: #{SETTINGS.keys.join(', ')})" unless SETTINGS.key?(key)

        public_send(:"#{key}=", value)
      end
      check_sentinels
      self
    end

    # write_timeout: the old name of max_lag.
    def write_timeout
      max_lag
    end

    def write_timeout=(seconds)
      self.max_lag = seconds
    end

    # Multisite (Spillway::Site): a callable without arguments that returns
    # the current site's id (or nil: no site) for publish, subscribe,
    # backlog, last_id and sign. Streams take theirs from the middleware's
    # site_id: ->(env) { ... }.
    def site_id=(callable)
      raise ArgumentError, "site_id must respond to #call (a proc returning the current site id), got #{callable.class}" \
        unless callable.nil? || callable.respond_to?(:call)

      @site_id = callable
    end

    def redis_url=(url)
      @redis_url = url.nil? || url.to_s.empty? ? nil : url.to_s
      redis if @redis_url # parse now: a bad URL fails at configure time
    end

    # The TLS settings of a rediss:// URL (nil: the defaults, the system's
    # CA store and full verification). Files are checked here, and loaded
    # once by OpenSSL, so that a missing or unreadable CA, certificate or
    # key fails at configure time.
    TLS_KEYS = %i[ca_file ca_path cert_file key_file verify server_name].freeze

    def redis_tls=(tls)
      if tls.nil?
        @redis_tls = nil
        return
      end
      raise ArgumentError, "redis_tls must be a Hash (#{TLS_KEYS.join(', ')}), got #{tls.class}" unless tls.is_a?(Hash)

      tls = tls.transform_keys(&:to_sym)
      unknown = tls.keys - TLS_KEYS
      raise ArgumentError, "unknown redis_tls setting #{unknown.first.inspect} (known: #{TLS_KEYS.join(', ')})" unless unknown.empty?

      @redis_tls = check_tls(tls).freeze
      redis if @redis_url # a plain redis:// with redis_tls fails now
    end

    # Whether the Redis connections skip certificate verification.
    def redis_tls_insecure?
      redis&.fetch(:tls, false) && redis_tls && redis_tls[:verify] == false ? true : false
    end

    # A libpq URL (postgres://user:pass@host:port/db?sslmode=...) or keyword
    # string ("host=/tmp port=5432 dbname=app"). Needs the gem built with
    # libpq (Spillway::Native::POSTGRES).
    def postgres_url=(url)
      url = url.nil? || url.to_s.empty? ? nil : url.to_s
      if url
        unless Native::POSTGRES
          raise ArgumentError, "postgres_url: this Spillway was built without libpq, so it has no PostgreSQL backend. " \
                               "Install libpq (Debian/Ubuntu: apt-get install libpq-dev) and reinstall the gem"
        end
        if url.include?("://") && !url.match?(%r{\Apostgres(ql)?://})
          raise ArgumentError, "unsupported PostgreSQL URL #{redact_pg(url).inspect}: use postgres://[user:password@]host[:port]/db " \
                               "or a libpq keyword string"
        end
      end
      @postgres_url = url
    end

    def effective_postgres_url
      @postgres_url || (ENV["SPILLWAY_POSTGRES_URL"].to_s.empty? ? nil : ENV["SPILLWAY_POSTGRES_URL"])
    end

    def namespace=(ns)
      ns = ns.to_s
      raise ArgumentError, "namespace must match #{CHANNEL_PATTERN.inspect}, got #{ns.inspect}" unless ns.match?(CHANNEL_PATTERN)

      @namespace = ns
    end

    def logger=(logger)
      @logger = logger
    end

    # At least 32 bytes (a Rails secret_key_base has 128 characters): it is
    # all that stands between a URL and any channel's stream.
    def secret=(secret)
      if secret.nil?
        @secret = nil
        return
      end
      raise ArgumentError, "secret must be a String, got #{secret.class}" unless secret.is_a?(String)
      raise ArgumentError, "secret must be at least 32 bytes, got #{secret.bytesize}" if secret.bytesize < 32

      @secret = secret.b.freeze
    end

    # Settings are shown in consoles and logs: the secret is not.
    def inspect
      "#<#{self.class.name} #{SETTINGS.keys.map { |k| "#{k}=#{%i[secret sentinel_password].include?(k) ? (public_send(k) ? '[set]' : 'nil') : public_send(k).inspect}" }.join(' ')}>"
    end

    def headers=(headers)
      headers.each do |name, value|
        unless name.to_s.match?(/\A[A-Za-z0-9!#$%&'*+\-.^_`|~]+\z/) && !value.to_s.match?(/[\r\n\0]/)
          raise ArgumentError, "invalid header #{name.inspect}: #{value.inspect}"
        end
      end
      @headers = headers.to_h { |k, v| [k.to_s, v.to_s] }
    end

    {
      heartbeat: [0.01, 3600], retry_interval: [0, 3600], max_lag: [0.01, 86_400],
      connect_timeout: [0.001, 60], command_timeout: [0.001, 60], health_interval: [0.1, 3600],
      unsubscribe_linger: [0, 3600], idempotency_ttl: [0.01, 30 * 86_400], log_interval: [0, 86_400],
      long_poll_timeout: [0, 3600]
    }.each do |name, (min, max)|
      define_method(:"#{name}=") do |value|
        value = Float(value)
        raise ArgumentError, "#{name} must be between #{min} and #{max} seconds, got #{value}" unless value.between?(min, max)

        instance_variable_set(:"@#{name}", value)
      end
    end

    {
      max_connections: [1, 10_000_000], max_channels_per_connection: [1, MAX_CHANNELS_CEILING],
      max_channel_length: [1, MAX_CHANNEL_LENGTH_CEILING], max_message_bytes: [1, MAX_MESSAGE_CEILING],
      outbox_limit: [1024, 2**31], memory_limit: [65_536, 2**50], backlog_size: [0, 10_000_000], backlog_ttl: [0, 2**31],
      max_backlog_channels: [1, 100_000_000], async_limit: [1, 10_000_000], queue_limit: [16, 100_000_000]
    }.each do |name, (min, max)|
      define_method(:"#{name}=") do |value|
        if value.nil? && name == :max_connections
          @max_connections = nil
          next
        end
        value = Integer(value)
        raise ArgumentError, "#{name} must be between #{min} and #{max}, got #{value}" unless value.between?(min, max)

        instance_variable_set(:"@#{name}", value)
      end
    end

    # nil or 0: off. Otherwise seconds (at least a millisecond): publishing
    # on a channel also trims its backlog to the messages of the last
    # backlog_window seconds (under the backlog_size ceiling).
    def backlog_window=(seconds)
      if seconds.nil? || seconds == 0
        @backlog_window = nil
        return
      end
      value = Float(seconds)
      raise ArgumentError, "backlog_window must be nil (off) or between 0.001 and #{2**31} seconds, got #{value}" unless value.between?(0.001, 2**31)

      @backlog_window = value
    end

    # Sentinel: "host:port" (port 26379 when left out, IPv6 as [addr]:port),
    # an Array or a comma-separated String; nil or empty: off.
    def redis_sentinels=(list)
      list = list.split(",") if list.is_a?(String)
      if list.nil? || list.empty?
        @redis_sentinels = nil
        return
      end
      raise ArgumentError, "redis_sentinels must be an Array of \"host:port\" Strings, got #{list.class}" unless list.is_a?(Array)

      @redis_sentinels = list.map { |entry| sentinel_address(entry) }.freeze
    end

    def redis_sentinel_master=(name)
      if name.nil?
        @redis_sentinel_master = nil
        return
      end
      name = name.to_s
      unless name.match?(/\A[^\s,\x00-\x1f]{1,200}\z/)
        raise ArgumentError, "redis_sentinel_master must be the name the sentinels monitor (1..200 characters, no spaces), got #{name.inspect}"
      end

      @redis_sentinel_master = name
    end

    def sentinel_password=(password)
      raise ArgumentError, "sentinel_password must be a String or nil, got #{password.class}" unless password.nil? || password.is_a?(String)

      @sentinel_password = password.nil? || password.empty? ? nil : password
    end

    # The settings that only mean something with redis_sentinels.
    def check_sentinels
      if @redis_sentinels.nil?
        raise ArgumentError, "redis_sentinel_master is set but redis_sentinels is not: list the sentinels to ask" if @redis_sentinel_master
        raise ArgumentError, "sentinel_password is set but redis_sentinels is not: list the sentinels to ask" if @sentinel_password
        return
      end
      redis
    end

    def backend
      return :postgres if effective_postgres_url
      redis ? :redis : :memory
    end

    def effective_redis_url
      @redis_url || (ENV["REDIS_URL"].to_s.empty? ? nil : ENV["REDIS_URL"])
    end

    # The parsed Redis URL as a Hash, or nil for the memory backend.
    def redis
      url = effective_redis_url
      return nil unless url || @redis_sentinels

      key = [url, @redis_sentinels, @redis_sentinel_master]
      return check_tls_scheme(@redis_parsed) if @redis_parsed_for == key

      parsed = url ? parse_redis_url(url) : { host: nil, port: nil, path: nil, db: 0, tls: false, shown: "(no redis_url)" }
      parsed = with_sentinels(parsed) if @redis_sentinels
      parsed = parsed.reject { |k, _| %i[url_host url_port].include?(k) }
      @redis_parsed = parsed
      @redis_parsed_for = key
      check_tls_scheme(@redis_parsed)
    end

    # Sentinel: the master's name (redis_sentinel_master, or the host of
    # redis_url) instead of an address; credentials, db and TLS stay the URL's.
    def with_sentinels(parsed)
      if parsed[:path]
        raise ArgumentError, "redis_sentinels with a unix:// Redis URL (#{parsed[:shown]}): the sentinels name a host and port; " \
                             "use redis://[user:password@][master-name][/db]"
      end
      if parsed[:url_port]
        raise ArgumentError, "redis_sentinels: the primary's port comes from the sentinels; drop the port from the Redis URL #{parsed[:shown]}"
      end
      url_master = parsed[:url_host]
      master = @redis_sentinel_master || url_master
      unless master
        raise ArgumentError, "redis_sentinels needs the name of the master they monitor: redis_sentinel_master: \"mymaster\" " \
                             "(or as the host of redis_url: redis://:password@mymaster/0)"
      end
      if @redis_sentinel_master && url_master && url_master != @redis_sentinel_master
        raise ArgumentError, "the Redis URL #{parsed[:shown]} names #{url_master.inspect} but redis_sentinel_master is " \
                             "#{@redis_sentinel_master.inspect}: give the master's name once (or leave the URL's host out)"
      end
      parsed.merge(host: master, port: 0, sentinels: @redis_sentinels, master: master)
    end

    # Settings for TLS and a URL without it: never plaintext by mistake.
    def check_tls_scheme(parsed)
      if redis_tls && !parsed[:tls]
        raise ArgumentError, "redis_tls is set but the Redis URL #{parsed[:shown]} is not rediss://: use rediss:// " \
                             "for TLS, or redis_tls: nil for plaintext"
      end
      parsed
    end

    def max_connections_effective
      @max_connections || begin
        soft, = Process.getrlimit(:NOFILE)
        soft = 1_000_000 if soft == Process::RLIM_INFINITY
        [soft - 256, 16].max
      end
    end

    def effective_logger
      @logger || (@default_logger ||= Logger.new($stderr, progname: "spillway"))
    end

    def valid_channel?(name)
      name.is_a?(String) && !name.empty? && name.bytesize <= max_channel_length && name.valid_encoding? &&
        name.match?(CHANNEL_PATTERN)
    end

    # Options for Spillway::Native::Hub.new.
    def native_options
      opts = {
        heartbeat_ms: ms(heartbeat), retry_ms: ms(retry_interval), max_connections: max_connections_effective,
        max_channels_per_connection: max_channels_per_connection, outbox_limit: outbox_limit,
        max_lag_ms: ms(max_lag), memory_limit: memory_limit, backlog_size: backlog_size, backlog_ttl: backlog_ttl,
        backlog_window_ms: backlog_window ? ms(backlog_window) : 0, max_backlog_channels: max_backlog_channels, queue_limit: queue_limit,
        extra_headers: headers.empty? ? nil : headers.map { |k, v| "#{k}: #{v}\r\n" }.join,
        log_interval_ms: ms(log_interval), long_poll_timeout_ms: ms(long_poll_timeout)
      }
      if backend == :postgres
        opts.merge!(postgres_native_options)
      elsif redis
        opts.merge!(redis_native_options)
      end
      opts
    end

    def postgres_native_options
      if namespace.bytesize > 63
        raise ArgumentError, "namespace #{namespace.inspect} is longer than 63 bytes: it names a PostgreSQL schema"
      end
      {
        postgres_conninfo: effective_postgres_url, namespace: namespace, connect_timeout_ms: ms(connect_timeout),
        command_timeout_ms: ms(command_timeout), backlog_size: [backlog_size, 1].max, backlog_ttl: backlog_ttl,
        idempotency_ttl_ms: ms(idempotency_ttl)
      }
    end

    def redis_native_options
      r = redis
      {
        redis_tls: r[:tls] ? (redis_tls || {}) : nil,
        redis_host: r[:path] ? nil : r[:host], redis_port: r[:port], redis_path: r[:path],
        redis_username: r[:username], redis_password: r[:password], redis_db: r[:db],
        namespace: namespace, connect_timeout_ms: ms(connect_timeout), command_timeout_ms: ms(command_timeout),
        health_interval_ms: ms(health_interval), backlog_size: backlog_size, backlog_ttl: backlog_ttl,
        backlog_window_ms: backlog_window ? ms(backlog_window) : 0, async_limit: async_limit, unsubscribe_linger_ms: ms(unsubscribe_linger),
        idempotency_ttl_ms: ms(idempotency_ttl)
      }.merge(sentinel_native_options(r))
    end

    def sentinel_native_options(parsed)
      return {} unless parsed[:sentinels]

      { redis_sentinels: parsed[:sentinels].join(","), redis_sentinel_master: parsed[:master],
        sentinel_password: sentinel_password, redis_port: 0 }
    end

    private

    def ms(seconds)
      (seconds * 1000).round
    end

    def parse_redis_url(url)
      uri = URI.parse(url)
      parsed =
        case uri.scheme
        when "redis", "rediss"
          url_host = uri.host.to_s.empty? ? nil : uri.host.delete_prefix("[").delete_suffix("]")
          path_db = uri.path.to_s.delete_prefix("/")
          db = path_db.empty? ? query_db(uri) : Integer(path_db, 10)
          { host: url_host || "127.0.0.1", port: uri.port || 6379, path: nil, db: db, tls: uri.scheme == "rediss",
            url_host: url_host, url_port: uri.port }.merge(credentials(uri))
        when "unix"
          raise ArgumentError, "unix:// Redis URL without a socket path: #{url}" if uri.path.to_s.empty?

          { host: nil, port: 0, path: uri.path, db: query_db(uri), tls: false }.merge(credentials(uri))
        else
          raise ArgumentError, "unsupported Redis URL #{url.inspect}: use redis://[user:password@]host[:port][/db], " \
                               "rediss://... (TLS) or unix://[user:password@]/path/to/redis.sock[?db=N]"
        end
      parsed[:shown] = redact(uri)
      parsed
    rescue URI::InvalidURIError => e
      raise ArgumentError, "invalid Redis URL #{url.inspect}: #{e.message}"
    end

    def redact_pg(url)
      url.sub(%r{://([^:/@]*):[^@]*@}, '://\\1:[password]@')
    end

    def sentinel_address(entry)
      text = entry.to_s.strip
      m = text.match(/\A(?:\[([0-9A-Fa-f:.]+)\]|([^\s:,\[\]]+))(?::(\d{1,5}))?\z/)
      port = m && (m[3] ? Integer(m[3], 10) : 26_379)
      unless m && port.between?(1, 65_535)
        raise ArgumentError, "redis_sentinels: #{entry.inspect} is not \"host:port\" (e.g. \"10.0.0.5:26379\", \"[::1]:26379\")"
      end

      m[1] ? "[#{m[1]}]:#{port}" : "#{m[2]}:#{port}"
    end

    def redact(uri)
      uri.password ? uri.to_s.sub(":#{uri.password}@", ":[password]@") : uri.to_s
    end

    def check_tls(tls)
      { ca_file: :file?, cert_file: :file?, key_file: :file?, ca_path: :directory? }.each do |key, test|
        next if tls[key].nil?

        path = tls[key] = tls[key].to_s
        raise ArgumentError, "redis_tls #{key}: #{path.inspect} does not exist" unless File.exist?(path)
        raise ArgumentError, "redis_tls #{key}: #{path.inspect} is not a #{test == :file? ? 'file' : 'directory'}" unless File.public_send(test, path)
        raise ArgumentError, "redis_tls #{key}: #{path.inspect} is not readable" unless File.readable?(path)
      end
      raise ArgumentError, "redis_tls key_file needs cert_file" if tls[:key_file] && !tls[:cert_file]
      unless [nil, true, false].include?(tls[:verify])
        raise ArgumentError, "redis_tls verify must be true or false, got #{tls[:verify].inspect}"
      end
      if tls.key?(:server_name) && !tls[:server_name].nil?
        tls[:server_name] = tls[:server_name].to_s
        raise ArgumentError, "redis_tls server_name must not be empty" if tls[:server_name].empty?
      end
      # OpenSSL reads them now: a file that is no PEM, a key that does not
      # match its certificate.
      Native.check_tls(redis_tls: tls)
      tls
    end

    def query_db(uri)
      db = URI.decode_www_form(uri.query.to_s).to_h["db"]
      db ? Integer(db, 10) : 0
    end

    def credentials(uri)
      user = uri.user && URI.decode_www_form_component(uri.user)
      password = uri.password && URI.decode_www_form_component(uri.password)
      # redis://:secret@host means a password without a user (AUTH secret).
      user = nil if user&.empty?
      { username: password ? user : nil, password: password }
    end
  end
end
