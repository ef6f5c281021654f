# frozen_string_literal: true

require "socket"

module Spillway
  # How a stream reaches the native hub, fastest first:
  #
  # 1. Full hijack of a plain TCP/Unix socket (Puma, Unicorn, Pitchfork,
  #    Falcon over HTTP/1.1; Passenger's wrapper around its plain Unix
  #    socket, unwrapped: see unwrap): the hub gets a duplicate of the
  #    descriptor and writes everything, the HTTP head included. No Ruby
  #    thread stays involved.
  # 2. Full hijack of something that is not a plain socket (Puma terminating
  #    TLS itself hands out a Puma::MiniSSL::Socket): the hub writes into one
  #    end of a socket pair and a Ruby thread pumps the bytes through the
  #    hijacked IO. Never plaintext into a TLS socket.
  # 3. No full hijack, but partial hijack (WEBrick): the server writes the
  #    head, its thread pumps the pair into the IO it hands us.
  # 4. Neither: a streaming body that reads the pair; the server's request
  #    thread is busy for as long as the stream is open. Under a fiber
  #    scheduler (Falcon over HTTP/2) a Rack 3 streaming body (call), which
  #    the server runs in a fiber of its own: one fiber per stream.
  #
  # Paths 2-4 warn once in the log and count in stats[:fallback_streams].
  module Fallback
    HEADERS = {
      "content-type" => "text/event-stream; charset=utf-8",
      "cache-control" => "no-cache, no-transform",
      "x-accel-buffering" => "no"
    }.freeze
    # The body of a partial-hijack response, which the server ignores. Not
    # the empty Array Rack suggests: Rack::ContentLength (in rackup's default
    # middleware) would add "content-length: 0" to it and WEBrick would keep
    # the connection alive, so a client would read an empty response and
    # never see the stream that follows.
    NO_BODY = Object.new.tap do |body|
      def body.each; end
    end.freeze
    CHUNK = 64 * 1024
    ERROR_RESPONSE = "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n" \
                     "Content-Length: 20\r\nConnection: close\r\n\r\nstream setup failed\n"

    module_function

    # Opens the stream on the best path available. hub.reserve has been
    # called: the place passes to the hub with the attach, or is given back
    # here when anything fails before that. The native path (1) allocates
    # as little as it can: it runs once per stream, thousands at once after
    # a deploy.
    # ident: the stream's identity ("u=..;g=..;c=..", Targets.identity) or nil.
    def open(env, hub, channels, cursor, flags = 0, ident = nil)
      io = begin
        full_hijack(env)
      rescue Exception # rubocop:disable Lint/RescueException
        hub.unreserve
        raise
      end
      return open_slow(env, io, hub, channels, cursor, flags, ident) unless io.is_a?(::BasicSocket)

      begin
        hub.attach(io, channels, cursor, Native::Hub::ATTACH_HEAD | flags, ident)
      rescue Exception # rubocop:disable Lint/RescueException
        give_back(hub, io)
        raise
      end
      # The hub has its own descriptor. Ours is closed once the server is
      # done with the request: Puma 6 still sets an option on it after the
      # app returns (and raises and rescues an IOError when it is closed).
      if (after_reply = env["rack.after_reply"]).is_a?(Array)
        after_reply << io.method(:close)
      else
        io.close
      end
      [200, {}, EMPTY_BODY]
    end

    # The hijacked response's body: nobody writes it. Frozen and shared;
    # the headers stay a new Hash, which middleware above may add to.
    EMPTY_BODY = [].freeze

    # Paths 2 to 4 (io: what full hijack gave, nil when nothing).
    def open_slow(env, io, hub, channels, cursor, flags, ident)
      attached = false
      attach = lambda do |sock, flags|
        hub.attach(sock, channels, cursor, flags, ident)
        attached = true
      end
      if io
        Spillway.warn_once(:hijack_not_socket,
                           "Spillway: the hijacked connection is a #{io.class}, not a plain socket (TLS terminated " \
                           "by the app server?); streams go through a Ruby thread each. Terminate TLS in a proxy " \
                           "for the native path.")
        src = attach_pair(attach, Native::Hub::ATTACH_HEAD | flags)
        pump(src, io, tune(io))
        return [200, {}, EMPTY_BODY]
      end
      if env["rack.hijack?"]
        Spillway.warn_once(:partial_hijack,
                           "Spillway: #{env['SERVER_SOFTWARE'] || 'this server'} has no full hijack; streams go " \
                           "through partial hijack and a Ruby thread each. Use Puma for the native path.")
        src = attach_pair(attach, flags)
        # The server's thread runs the copy: WEBrick closes the connection
        # as soon as the callback returns.
        return [200, headers.merge("rack.hijack" => ->(out) { copy(src, out, tune(out)) }), NO_BODY]
      end
      Spillway.warn_once(:no_hijack,
                         "Spillway: #{env['SERVER_SOFTWARE'] || 'this server'} supports no hijack; each stream " \
                         "holds a server thread. Use Puma for the native path.")
      src = attach_pair(attach, flags)
      [200, headers, Fiber.scheduler ? StreamingBody.new(src) : Body.new(src)]
    rescue Exception # rubocop:disable Lint/RescueException
      give_back(hub, io) unless attached
      raise
    end

    # The stream could not be attached: its place goes back to the hub and,
    # as the server will not answer a hijacked connection, we do.
    def give_back(hub, io)
      hub.unreserve
      return unless io && !io.closed?

      begin
        io.write(ERROR_RESPONSE)
      rescue StandardError
        nil
      end
      io.close
    end

    # The head of a stream the server writes (paths 3 and 4): the same
    # fields the hub writes on paths 1 and 2, the configured `headers` too.
    # Rack 3 wants lower-case names in a response.
    def headers
      HEADERS.merge(Spillway.config.headers.to_h { |name, value| [name.downcase, value] })
    end

    # The hijacked IO, or nil when the server cannot give one.
    def full_hijack(env)
      return nil unless env["rack.hijack?"] && env["rack.hijack"]

      io = env["rack.hijack"].call
      io = env["rack.hijack_io"] unless io.respond_to?(:write)
      unwrap(io)
    rescue NotImplementedError
      # WEBrick under Rack 2: "only partial hijack is supported".
      nil
    end

    # The plain socket inside a server's wrapper when handing that socket
    # to the hub loses nothing; otherwise io itself (paths 2-4 decide).
    #
    # Only Passenger's wrapper (PhusionPassenger::Utils::UnseekableSocket)
    # qualifies. It wraps the Unix socket from Passenger's core, which
    # proxies the client (TLS, if any, ends there): what the app writes into
    # it is plain HTTP, the head included. The wrapper buffers nothing (it
    # only fakes EOF for reads past the request), the socket is sync, and
    # after a full hijack Passenger's request thread drops the connection
    # without touching it again. Not any wrapper whose to_io is a socket:
    # Puma's MiniSSL::Socket is one too, over TLS. Nothing the server wrote
    # can be pending (the socket is sync); what could be is input, a request
    # body nobody read, which the hub drains and ignores as it does a
    # client's on any server.
    def unwrap(io)
      return io unless defined?(::PhusionPassenger::Utils::UnseekableSocket) &&
                       io.instance_of?(::PhusionPassenger::Utils::UnseekableSocket)

      sock = io.to_io
      return io unless (sock.is_a?(::UNIXSocket) || sock.is_a?(::TCPSocket)) && !sock.closed? && sock.sync

      sock
    rescue StandardError
      io
    end

    # The hub's end of a socket pair is attached; ours is returned.
    def attach_pair(attach, flags)
      ours, theirs = UNIXSocket.pair
      begin
        attach.call(theirs, flags | Native::Hub::ATTACH_FALLBACK)
      rescue StandardError
        ours.close
        raise
      ensure
        theirs.close
      end
      ours
    end

    # Copies what the hub writes into out until either side closes. A
    # client that went away makes the write fail; the pair closes and the
    # hub releases the stream. When the client's own socket is known
    # (watch), its EOF is noticed at once, as on the native path.
    def pump(src, out, watch = nil)
      Thread.new do
        Thread.current.name = "spillway-pump"
        Thread.current.report_on_exception = false
        copy(src, out, watch)
      end
    end

    # The pump's loop, on the calling thread; closes both ends.
    def copy(src, out, watch = nil)
      ios = watch ? [src, watch] : [src]
      loop do
        ready, = IO.select(ios)
        # An SSE client sends nothing after its request: readable means
        # EOF, a reset, or a TLS close_notify. Either way it is gone.
        break if watch && ready.include?(watch) && watch.recv_nonblock(1, Socket::MSG_PEEK, exception: false) != :wait_readable
        next unless ready.include?(src)

        out.write(src.readpartial(CHUNK))
        out.flush if out.respond_to?(:flush)
      end
    rescue StandardError
      nil
    ensure
      src.close unless src.closed?
      begin
        out.close
      rescue StandardError
        nil
      end
    end

    # The socket under a wrapped IO (TLS), set up so the kernel notices a
    # vanished peer as on the native path; nil when there is none.
    def tune(io)
      sock = io.respond_to?(:to_io) ? io.to_io : nil
      return nil unless sock.is_a?(::BasicSocket)

      if defined?(Socket::TCP_USER_TIMEOUT) && sock.local_address.ip?
        sock.setsockopt(Socket::IPPROTO_TCP, Socket::TCP_USER_TIMEOUT, (Spillway.config.heartbeat * 1000).round)
      end
      sock
    rescue StandardError
      nil
    end

    # A Rack body over the pair that the server iterates (servers without
    # hijack).
    class Body
      def initialize(src)
        @src = src
      end

      def each
        loop { yield @src.readpartial(CHUNK) }
      rescue EOFError, IOError, SystemCallError
        nil
      ensure
        close
      end

      def close
        @src.close unless @src.closed?
      end
    end

    # A Rack 3 streaming body over the pair, for servers that run requests
    # under a fiber scheduler (Falcon over HTTP/2). Not an each body there:
    # Falcon pulls one through Enumerator#next, whose fiber is a blocking
    # one, so a read waiting in it would stop every request of the worker.
    # Called in a fiber of the server's, the read waits on the scheduler.
    class StreamingBody
      def initialize(src)
        @src = src
      end

      def call(stream)
        loop do
          stream.write(@src.readpartial(CHUNK))
          stream.flush if stream.respond_to?(:flush)
        end
      rescue StandardError
        # EOF from the hub, or the client gone (the write failed).
        nil
      ensure
        # Also when the server stops the fiber (the client reset the stream).
        close
        begin
          stream.close
        rescue StandardError
          nil
        end
      end

      def close
        @src.close unless @src.closed?
      end
    end
  end
end
