# frozen_string_literal: true

require "socket"
require "net/http"
require "uri"

# Connect/disconnect churn against a real server over real TCP, for
# spec/integration/churn_spec.rb: many short-lived SSE streams in flight at
# once, driven by IO.select from one thread, each ending in one of several
# ways (see PLAN).
class ChurnDriver
  include Waiting

  # What one cycle does, in the order the cycles take them (two ninths
  # each for live, replay and multi, a ninth each for the rest):
  #   head_fin  closes (FIN) right after the response head
  #   head_rst  the same with SO_LINGER 0: the close sends RST
  #   live      waits for 1-3 live messages from the publisher, then closes
  #             (FIN or RST)
  #   replay    resumes with a Last-Event-ID far back, with a small receive
  #             buffer, and closes after 0-3 events of the replay, while the
  #             hub is still writing it (FIN or RST)
  #   multi     two live channels and two channels no one else ever uses
  #             (made and dropped by the hub, subscribed and unsubscribed in
  #             Redis), closed after the head or after one message (FIN or
  #             RST)
  #   half      shuts down its sending side after the head and waits for the
  #             server to close the stream, then closes
  # (A client gone before the answer never reaches Spillway: Puma drops it
  # before it calls the app.)
  PLAN = %i[head_fin live replay multi half replay head_rst live multi].freeze
  # A receive buffer the kernel clamps to its minimum: a replay of hundreds
  # of KB cannot fit in flight, so the hub is still writing it at the close.
  SMALL_RCVBUF = 4096

  Failure = Struct.new(:cycle, :kind, :state, :message)

  # One stream in flight.
  class Client
    attr_reader :sock, :kind, :cycle, :deadline, :status
    attr_accessor :state, :target, :rst

    def initialize(sock, kind, cycle, deadline)
      @sock = sock
      @kind = kind
      @cycle = cycle
      @deadline = deadline
      @state = :connecting
      @head = +"".b
      @status = nil
      @parser = nil
    end

    def head?
      !@status.nil?
    end

    # Takes bytes read from the socket; true once the head is complete.
    def feed(bytes)
      if @status.nil?
        @head << bytes
        i = @head.index("\r\n\r\n")
        return false unless i

        @status = @head[/\AHTTP\/1\.1 (\d{3})/, 1].to_i
        rest = @head.byteslice(i + 4..)
        @head = nil
        bytes = rest
      end
      (@parser ||= SSEParser.new).feed(bytes) unless bytes.empty?
      true
    end

    def events
      @parser ? @parser.events : []
    end
  end

  attr_reader :counts, :mid_replay, :replay_before_first, :half_closed_by_server, :failures, :started, :finished

  # port: the server. live: channels the publisher keeps publishing on.
  # replay: { channel:, cursor:, first:, count: }, a backlog published
  # beforehand; the cursor is the id before message number `first`, and
  # `count` messages follow it. At most `replays` replay cycles are in
  # flight at once (nil: no limit beyond `concurrency`); the next cycle
  # waits when it is a replay and the limit is reached. plan: the kinds the
  # cycles take in turn.
  def initialize(port:, live:, replay:, concurrency: 200, replays: nil, plan: PLAN, timeout: 15, host: "127.0.0.1")
    @addr = Socket.sockaddr_in(port, host)
    @hostport = "#{host}:#{port}"
    @live = live
    @replay = replay
    @concurrency = concurrency
    @plan = plan
    @max_replays = replays || concurrency
    @replays = 0
    @timeout = timeout * Waiting::SLOW
    @counts = Hash.new(0)
    @mid_replay = 0
    @replay_before_first = 0
    @half_closed_by_server = 0
    @failures = []
    @started = 0
    @finished = 0
    @unique = 0
  end

  # Runs `cycles` more cycles, `concurrency` at a time. Yields how many of
  # them have finished every `every` cycles (and at the end).
  def run(cycles, every: 1000)
    inflight = {}
    goal = @started + cycles
    base = @finished
    next_report = base + every
    until @finished >= goal
      while inflight.size < @concurrency && @started < goal
        break if @plan[@started % @plan.size] == :replay && @replays >= @max_replays

        c = start(@started)
        @started += 1
        inflight[c.sock] = c
      end
      readers = []
      writers = []
      inflight.each_value { |c| (c.state == :connecting ? writers : readers) << c.sock }
      ready = IO.select(readers, writers, nil, 0.05)
      if ready
        ready[1].each { |s| inflight.delete(s) if step_connect(inflight[s]) == :done }
        ready[0].each { |s| inflight.delete(s) if step_read(inflight[s]) == :done }
      end
      reap_timeouts(inflight)
      while @finished >= next_report
        yield next_report - base if block_given?
        next_report += every
      end
    end
    yield @finished - base if block_given? && (@finished - base) % every != 0
    self
  ensure
    inflight&.each_key { |s| s.close unless s.closed? }
  end

  private

  def start(cycle)
    kind = @plan[cycle % @plan.size]
    @replays += 1 if kind == :replay
    sock = Socket.new(:INET, :STREAM)
    sock.setsockopt(:SOCKET, :RCVBUF, SMALL_RCVBUF) if kind == :replay
    c = Client.new(sock, kind, cycle, monotonic + @timeout)
    # Which way the cycles of one kind end alternates with every round of
    # the plan; how many events they wait for goes round 0..3.
    round = cycle / @plan.size
    c.rst = round.odd?
    c.target =
      case kind
      when :live then 1 + (round % 3)
      when :replay then round % 4
      when :multi then round % 2
      else 0
      end
    sock.connect_nonblock(@addr, exception: false)
    c
  end

  # Writable while connecting: the connection is up (or failed); the
  # request goes out in one write.
  def step_connect(c)
    err = c.sock.getsockopt(:SOCKET, :ERROR).int
    return fail(c, "connect: #{SystemCallError.new(err).message}") unless err.zero?

    c.sock.write_nonblock(request(c))
    c.state = :reading
    :pending
  rescue SystemCallError, IOError => e
    fail(c, "connect/write: #{e.class}: #{e.message}")
  end

  def request(c)
    channels =
      case c.kind
      when :replay then [@replay[:channel]]
      when :multi
        @unique += 1
        [@live[c.cycle % @live.size], @live[(c.cycle + 1) % @live.size], "churn:u:#{@unique}a", "churn:u:#{@unique}b"]
      else [@live[c.cycle % @live.size]]
      end
    query = channels.map { |ch| "channel=#{URI.encode_www_form_component(ch)}" }.join("&")
    head = +"GET /stream?#{query} HTTP/1.1\r\nHost: #{@hostport}\r\nAccept: text/event-stream\r\n"
    head << "Last-Event-ID: #{@replay[:cursor]}\r\n" if c.kind == :replay
    head << "\r\n"
  end

  def step_read(c)
    loop do
      chunk = c.sock.read_nonblock(65_536, exception: false)
      return :pending if chunk == :wait_readable
      return on_eof(c) if chunk.nil?

      next unless c.feed(chunk)
      return fail(c, "status #{c.status}") unless c.status == 200
      # A client that half-closed drains until the server closes.
      next if c.state == :half_closed

      r = after_head(c)
      return r if r
    end
  rescue Errno::ECONNRESET => e
    # Only a client that half-closed may see the server's close as a reset
    # (its unread bytes); anyone else was cut off.
    c.state == :half_closed ? on_eof(c) : fail(c, "reset by the server: #{e.message}")
  rescue SystemCallError, IOError => e
    fail(c, "read: #{e.class}: #{e.message}")
  end

  # Decides, with the head (and maybe events) in, whether the cycle ends now.
  def after_head(c)
    case c.kind
    when :head_fin, :head_rst then close(c, c.kind == :head_rst)
    when :half
      c.sock.shutdown(Socket::SHUT_WR)
      c.state = :half_closed
      nil
    when :live, :multi then c.events.size >= c.target ? close(c, c.rst) : nil
    when :replay
      return nil if c.events.size < c.target

      check_replay(c) || close(c, c.rst)
    end
  end

  # The events a replay client got are the start of the backlog after its
  # cursor, in order; fewer than all of it means the close came mid-replay.
  def check_replay(c)
    got = c.events.map { |e| e.data.to_i }
    want = (@replay[:first]...(@replay[:first] + got.size)).to_a
    return fail(c, "replay out of order: #{got.first(5)}... (want #{want.first(5)}...)") unless got == want

    if got.empty?
      @replay_before_first += 1
    elsif got.size < @replay[:count]
      @mid_replay += 1
    end
    nil
  end

  def on_eof(c)
    return fail(c, "the server closed the stream (#{c.kind}, #{c.events.size} events)") unless c.state == :half_closed

    @half_closed_by_server += 1
    close(c, false)
  end

  def close(c, rst)
    c.sock.setsockopt(Socket::SOL_SOCKET, Socket::SO_LINGER, [1, 0].pack("ii")) if rst
    c.sock.close
    @counts[c.kind] += 1
    ended(c)
  end

  def fail(c, message)
    @failures << Failure.new(c.cycle, c.kind, c.state, message) if @failures.size < 50
    c.sock.close unless c.sock.closed?
    @counts[:failed] += 1
    ended(c)
  end

  def ended(c)
    @replays -= 1 if c.kind == :replay
    @finished += 1
    :done
  end

  def reap_timeouts(inflight)
    now = monotonic
    inflight.values.each do |c|
      next unless now > c.deadline

      fail(c, "not done within #{@timeout}s (state #{c.state}, head #{c.head?}, #{c.events.size} events)")
      inflight.delete(c.sock)
    end
  end
end

# Publishes small messages on the live channels through the app, at a
# steady pace, from a thread, until stopped.
class ChurnPublisher
  attr_reader :published, :errors

  def initialize(port, channels, per_request: 4, interval: 0.02)
    @port = port
    @channels = channels
    @per_request = per_request
    @interval = interval
    @published = 0
    @errors = []
    @lock = Mutex.new
    @wake = ConditionVariable.new
  end

  def start
    @stop = false
    @thread = Thread.new do
      http = Net::HTTP.start("127.0.0.1", @port, open_timeout: 5, read_timeout: 10)
      i = 0
      until stopping?
        ch = @channels[i % @channels.size]
        i += 1
        res = http.post("/publish_seq?channel=#{ch}&from=#{i}&count=#{@per_request}&size=64", "")
        res.code == "200" ? @published += @per_request : @errors << "#{res.code} #{res.body}"
        # The pace, not a wait for a condition: the stop signal cuts it short.
        @lock.synchronize { @wake.wait(@lock, @interval) unless @stop }
      end
    rescue StandardError => e
      @errors << "#{e.class}: #{e.message}"
    ensure
      http&.finish if http&.started?
    end
    self
  end

  def stop
    @lock.synchronize do
      @stop = true
      @wake.signal
    end
    @thread&.join
    self
  end

  private

  def stopping?
    @lock.synchronize { @stop }
  end
end

# What a process holds: its descriptors (by kind) and its resident memory.
module ProcessProbe
  module_function

  def fd_count(pid)
    Dir.children("/proc/#{pid}/fd").size
  end

  def rss_kib(pid)
    File.read("/proc/#{pid}/status")[/^VmRSS:\s+(\d+)/, 1].to_i
  end

  # The descriptors of pid by kind: "tcp:<port> <state>" for TCP sockets
  # whose local port is `port` (the server's side of a client connection),
  # "tcp" for other TCP sockets, else the link's kind (socket, pipe,
  # anon_inode:[eventpoll], a file).
  def fd_kinds(pid, port)
    tcp = tcp_sockets
    Dir.children("/proc/#{pid}/fd").each_with_object(Hash.new(0)) do |fd, h|
      link = begin
        File.readlink("/proc/#{pid}/fd/#{fd}")
      rescue Errno::ENOENT
        next
      end
      inode = link[/\Asocket:\[(\d+)\]\z/, 1]
      kind =
        if inode && (t = tcp[inode])
          t[:local_port] == port && t[:state] != "LISTEN" ? "client conn (#{t[:state]})" : "tcp #{t[:state]}"
        elsif inode then "socket"
        elsif link.start_with?("pipe:") then "pipe"
        elsif link.start_with?("anon_inode:") then link
        else "file"
        end
      h[kind] += 1
    end
  end

  # The state names of /proc/net/tcp (include/net/tcp_states.h).
  TCP_STATES = %w[? ESTABLISHED SYN_SENT SYN_RECV FIN_WAIT1 FIN_WAIT2 TIME_WAIT CLOSE CLOSE_WAIT
                  LAST_ACK LISTEN CLOSING NEW_SYN_RECV].freeze

  def tcp_sockets
    %w[/proc/net/tcp /proc/net/tcp6].each_with_object({}) do |file, h|
      next unless File.exist?(file)

      File.foreach(file).drop(1).each do |line|
        f = line.split
        h[f[9]] = { local_port: f[1].split(":").last.to_i(16), state: TCP_STATES[f[3].to_i(16)] || f[3] }
      end
    end
  end
end
