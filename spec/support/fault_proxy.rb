# frozen_string_literal: true

require "socket"

# A TCP relay between the app and a real redis-server that misbehaves on
# demand: it delays Redis's replies, or cuts every connection in the middle
# of a reply (part of the bytes forwarded, then both sides closed). Redis
# itself never does either on purpose; everything else is the real thing.
class FaultProxy
  include Waiting

  attr_reader :port, :cuts

  def initialize(target_port)
    @target_port = target_port
    @server = TCPServer.new("127.0.0.1", 0)
    @port = @server.addr[1]
    @delay = 0.0
    @delay_scripted = 0.0
    @requests = [] # the latest requests toward Redis, for requests_with
    @cut_pending = 0
    @cuts = 0
    @lock = Mutex.new
    @pairs = []
    @thread = Thread.new { accept_loop }
  end

  # Seconds every reply chunk waits before it is forwarded.
  def delay=(seconds)
    @lock.synchronize { @delay = seconds }
  end

  # Seconds a reply waits on connections that have run a script (EVAL,
  # EVALSHA): Spillway's command link, not its subscriber link.
  def delay_scripted=(seconds)
    @lock.synchronize { @delay_scripted = seconds }
  end

  # Every connection open now is cut inside the next reply chunk it carries
  # (connections that carry nothing more are cut at once after `grace`).
  def cut_mid_reply!(grace: 0.5)
    pairs = @lock.synchronize { @pairs.dup }
    pairs.each { |p| p[:cut_at] = monotonic + grace }
  end

  # How many requests toward Redis have contained `text` so far.
  def requests_with(text)
    @lock.synchronize { @requests.count { |r| r.include?(text) } }
  end

  def close
    @server.close
    @thread.kill
    @lock.synchronize { @pairs.dup }.each { |p| shut(p) }
  end

  private

  def accept_loop
    loop do
      client = @server.accept
      begin
        upstream = TCPSocket.new("127.0.0.1", @target_port)
      rescue SystemCallError
        client.close # Redis is down: so is the relay, for this connection
        next
      end
      pair = { client: client, upstream: upstream, cut_at: nil }
      @lock.synchronize { @pairs << pair }
      Thread.new { relay(pair) }
    end
  rescue IOError, SystemCallError
    nil # closed
  end

  def relay(pair)
    client, upstream = pair[:client], pair[:upstream]
    loop do
      ready, = IO.select([client, upstream], nil, nil, 0.05)
      if pair[:cut_at] && monotonic > pair[:cut_at]
        @cuts += 1
        return
      end
      next unless ready

      ready.each do |io|
        data = io.read_nonblock(65_536, exception: false)
        next if data == :wait_readable
        return if data.nil?

        if io == upstream
          delay = @lock.synchronize { pair[:scripted] ? [@delay, @delay_scripted].max : @delay }
          sleep delay if delay.positive?
          if pair[:cut_at] && data.bytesize >= 2
            client.write(data.byteslice(0, data.bytesize / 2))
            @cuts += 1
            return
          end
          client.write(data)
        else
          pair[:scripted] ||= data.include?("EVAL")
          @lock.synchronize { @requests << data; @requests.shift while @requests.size > 1000 }
          upstream.write(data)
        end
      end
    end
  rescue IOError, SystemCallError
    nil
  ensure
    shut(pair)
  end

  def shut(pair)
    @lock.synchronize { @pairs.delete(pair) }
    [pair[:client], pair[:upstream]].each { |s| s.close unless s.closed? }
  rescue IOError
    nil
  end
end
