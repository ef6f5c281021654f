# frozen_string_literal: true

require "socket"

# A TCP proxy in front of a real redis-server that passes everything through
# and, on request, puts into the hub's connections what a real Redis never
# sends: a malformed reply between two whole replies of the subscriber link,
# or a malformed reply in place of the answer to one command on the command
# link. Everything else (handshake, SUBSCRIBE, the scripts, the backlog) is
# the real Redis.
#
#   proxy = RespProxy.new(redis.port).start
#   proxy.inject(:sub, "*3\r\n$7\r\nmessage\r\n$-1\r\n$1\r\nx\r\n")
#   proxy.replace_next(:cmd, ->(args) { args[0] == "EVALSHA" }, "*0\r\n")
class RespProxy
  include Waiting

  # One proxied connection: the hub's socket, Redis's socket, and the role
  # the hub gave it (CLIENT SETNAME spillway-sub-<pid> / spillway-cmd-<pid>).
  class Conn
    attr_reader :lock, :client
    attr_accessor :role, :requests

    def initialize(client, server)
      @client = client
      @server = server
      @lock = Mutex.new
      @requests = Queue.new # commands sent, oldest first (the command link answers in order)
      @role = nil
    end

    # Under the lock: an injection in progress finishes first (the hub may
    # drop the connection the moment it reads the injected bytes).
    def close
      @lock.synchronize { [@client, @server].each { |s| s.close unless s.closed? } }
    end
  end

  attr_reader :port

  def initialize(target_port)
    @target_port = target_port
    @server = TCPServer.new("127.0.0.1", 0)
    @port = @server.addr[1]
    @conns = []
    @lock = Mutex.new
    @replacements = []
    @threads = []
  end

  def url
    "redis://127.0.0.1:#{port}/0"
  end

  def start
    @threads << Thread.new do
      loop do
        client = @server.accept
        server = Socket.tcp("127.0.0.1", @target_port)
        conn = Conn.new(client, server)
        @lock.synchronize { @conns << conn }
        @threads << Thread.new { upstream(conn, client, server) }
        @threads << Thread.new { downstream(conn, server, client) }
      end
    rescue IOError, SystemCallError
      nil
    end
    self
  end

  def stop
    @server.close unless @server.closed?
    @lock.synchronize { @conns.each(&:close) }
    @threads.each { |t| t.join(5) }
  end

  # Connections of a role that are open now.
  def live(role)
    @lock.synchronize { @conns.select { |c| c.role == role && !c.client.closed? } }
  end

  # Waits for the hub's connection of that role and writes bytes to the hub
  # between two whole replies.
  def inject(role, bytes)
    conn = wait_until(message: "a #{role} connection") { live(role).last }
    conn.lock.synchronize { conn.client.write(bytes) }
  end

  # The reply to the next command of the role for which match(args) is true
  # is replaced by bytes (the real reply is dropped).
  def replace_next(role, match, bytes)
    @lock.synchronize { @replacements << [role, match, bytes] }
  end

  def replacements_left
    @lock.synchronize { @replacements.size }
  end

  # The byte offset after the whole RESP value that starts at pos, or nil
  # when buf does not hold all of it yet.
  def self.value_end(buf, pos)
    nl = buf.index("\r\n", pos) or return nil
    after = nl + 2
    case buf.getbyte(pos)
    when 43, 45, 58 then after # + - :
    when 36 # $
      n = Integer(buf.byteslice(pos + 1, nl - pos - 1))
      return after if n.negative?

      after + n + 2 <= buf.bytesize ? after + n + 2 : nil
    when 42 # *
      n = Integer(buf.byteslice(pos + 1, nl - pos - 1))
      n.times { (after = value_end(buf, after)) or return nil }
      after
    else raise ArgumentError, "not RESP at #{pos}: #{buf.byteslice(pos, 20).inspect}"
    end
  end

  # A command the hub sent (an array of bulk strings) as its arguments.
  def self.command_args(bytes)
    nl = bytes.index("\r\n")
    pos = nl + 2
    Array.new(Integer(bytes.byteslice(1, nl - 1))) do
      nl = bytes.index("\r\n", pos)
      n = Integer(bytes.byteslice(pos + 1, nl - pos - 1))
      pos = nl + 2 + n + 2
      bytes.byteslice(nl + 2, n)
    end
  end

  private

  # Hub -> Redis: passed through as it comes; each command is remembered so
  # that its reply can be found.
  def upstream(conn, from, to)
    buf = +"".b
    loop do
      chunk = from.readpartial(65_536)
      buf << chunk
      # Remembered before Redis can see them, so no reply comes first.
      while (e = self.class.value_end(buf, 0))
        args = self.class.command_args(buf.byteslice(0, e))
        buf = buf.byteslice(e..)
        if args[0]&.upcase == "CLIENT" && args[1]&.upcase == "SETNAME"
          conn.role = args[2].start_with?("spillway-sub") ? :sub : :cmd
        end
        conn.requests << args
      end
      to.write(chunk)
    end
  rescue IOError, SystemCallError, EOFError
    conn.close
  end

  # Redis -> hub: whole replies only, so that an injection never lands in
  # the middle of one.
  def downstream(conn, from, to)
    buf = +"".b
    loop do
      buf << from.readpartial(65_536)
      while (e = self.class.value_end(buf, 0))
        reply = buf.byteslice(0, e)
        buf = buf.byteslice(e..)
        conn.lock.synchronize { to.write(replacement(conn, reply) || reply) }
      end
    end
  rescue IOError, SystemCallError, EOFError
    conn.close
  end

  def replacement(conn, reply)
    # Pub/sub pushes answer no command: only the command link pairs replies.
    return nil unless conn.role == :cmd

    args = conn.requests.pop(true)
    @lock.synchronize do
      i = @replacements.index { |role, match, _| role == :cmd && match.call(args) }
      i && @replacements.delete_at(i)[2]
    end
  rescue ThreadError
    nil
  end
end
