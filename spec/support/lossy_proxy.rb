# frozen_string_literal: true

require "socket"

# A TCP proxy in front of a real redis-server that loses one reply, which a
# real Redis never does on its own at a chosen moment. The first request
# that carries the marker is forwarded; Redis runs it and answers; then the
# proxy either closes the client's connection instead of passing the answer
# on (:drop, a connection killed between the write and the reply) or keeps
# the connection open and the answer back (:hold, a Redis too slow to
# answer within the client's timeout). Every other byte, on every other
# connection, passes through unchanged.
#
#   proxy = LossyProxy.new(redis.port)
#   proxy.lose_reply_to("data: 42\n", mode: :drop)
#   Spillway.configure(redis_url: proxy.url)
class LossyProxy
  attr_reader :port

  def initialize(upstream_port)
    @upstream_port = upstream_port
    @server = TCPServer.new("127.0.0.1", 0)
    @port = @server.addr[1]
    @lock = Mutex.new
    @marker = nil
    @mode = nil
    @lost = 0
    @accepted = 0
    @sockets = []
    @threads = [Thread.new { accept_loop }]
  end

  def url
    "redis://127.0.0.1:#{port}/0"
  end

  # Arms the proxy for one request: the next one (on any connection) whose
  # bytes include marker.
  def lose_reply_to(marker, mode: :drop)
    raise ArgumentError, "mode is :drop or :hold" unless %i[drop hold].include?(mode)

    @lock.synchronize do
      @marker = marker.b
      @mode = mode
    end
  end

  # Replies lost so far (a reply counts once Redis has sent it).
  def lost
    @lock.synchronize { @lost }
  end

  def accepted
    @lock.synchronize { @accepted }
  end

  # From now on new connections are refused (the listening socket closes);
  # open ones keep working.
  def refuse_new
    @server.close
  rescue IOError
    nil
  end

  # Listens again, on the same port.
  def accept_new
    @server = TCPServer.new("127.0.0.1", @port)
    @threads << Thread.new { accept_loop }
  end

  def close
    refuse_new
    @lock.synchronize { @sockets.dup }.each do |s|
      s.close
    rescue IOError
      nil
    end
    @threads.each { |t| t.join(2) }
  end

  private

  def accept_loop
    loop do
      client = @server.accept
      upstream = TCPSocket.new("127.0.0.1", @upstream_port)
      @lock.synchronize do
        @accepted += 1
        @sockets << client << upstream
      end
      victim = { hit: false }
      @threads << Thread.new { pump_requests(client, upstream, victim) }
      @threads << Thread.new { pump_replies(upstream, client, victim) }
    end
  rescue IOError, SystemCallError
    nil # closed
  end

  def take_marker(chunk)
    @lock.synchronize do
      next nil unless @marker && chunk.include?(@marker)

      mode = @mode
      @marker = nil
      mode
    end
  end

  # Client -> Redis. The victim is marked before its bytes leave, so the
  # reply pump cannot pass the answer on first.
  def pump_requests(client, upstream, victim)
    loop do
      chunk = client.readpartial(65_536)
      mode = take_marker(chunk)
      victim[:mode] = mode if mode
      victim[:hit] ||= !mode.nil?
      upstream.write(chunk)
    end
  rescue IOError, SystemCallError, EOFError
    close_quietly(upstream)
    close_quietly(client)
  end

  # Redis -> client. Once the victim's request went out, whatever Redis
  # answers is lost.
  def pump_replies(upstream, client, victim)
    loop do
      chunk = upstream.readpartial(65_536)
      if victim[:hit]
        @lock.synchronize { @lost += 1 } unless victim[:counted]
        victim[:counted] = true
        if victim[:mode] == :drop
          close_quietly(client)
          close_quietly(upstream)
          return
        end
        next # :hold: never passed on; the client gives up on its own
      end
      client.write(chunk)
    end
  rescue IOError, SystemCallError, EOFError
    close_quietly(client)
  end

  def close_quietly(sock)
    sock.close
  rescue IOError
    nil
  end
end
