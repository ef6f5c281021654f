# frozen_string_literal: true

require "socket"

# A reference parser of text/event-stream, after the WHATWG HTML spec
# ("Interpreting an event stream"): what a browser's EventSource does with
# the bytes. The tests judge Spillway's output with it.
class SSEParser
  Event = Struct.new(:type, :data, :last_event_id, keyword_init: true)
  LINE_END = /\r\n|\r|\n/n.freeze

  attr_reader :events, :comments, :retry_ms, :last_event_id

  def initialize
    @buf = +"".b
    @events = []
    @comments = 0
    @retry_ms = nil
    @last_event_id = +""
    @id_buf = +""
    @data_buf = nil
    @type_buf = +""
  end

  def feed(bytes)
    @buf << bytes.b
    pos = 0
    while (m = LINE_END.match(@buf, pos))
      # A CR at the very end may be the first half of a CRLF: wait.
      break if m[0] == "\r" && m.end(0) == @buf.bytesize

      process_line(@buf.byteslice(pos, m.begin(0) - pos))
      pos = m.end(0)
    end
    @buf = @buf.byteslice(pos..) || +"".b
    self
  end

  def data
    events.map(&:data)
  end

  private

  def process_line(line)
    if line.empty?
      dispatch
    elsif line.start_with?(":")
      @comments += 1
    else
      field, value = line.include?(":") ? line.split(":", 2) : [line, +""]
      value = value[1..] if value.start_with?(" ")
      case field
      when "event" then @type_buf = value
      when "data" then (@data_buf ||= +"".b) << value << "\n"
      when "id" then @id_buf = value unless value.include?("\0")
      when "retry" then @retry_ms = Integer(value) if value.match?(/\A\d+\z/)
      end
    end
  end

  def dispatch
    @last_event_id = @id_buf.dup.force_encoding(Encoding::UTF_8)
    if @data_buf.nil?
      @type_buf = +""
      return
    end
    data = @data_buf.chomp("\n").force_encoding(Encoding::UTF_8)
    type = @type_buf.empty? ? "message" : @type_buf.dup.force_encoding(Encoding::UTF_8)
    @events << Event.new(type: type, data: data, last_event_id: @last_event_id)
    @data_buf = nil
    @type_buf = +""
  end
end

# One HTTP/1.1 client on a raw socket reading an SSE response: the head,
# then the body (close-delimited or chunked) through SSEParser.
class SSEClient
  include Waiting

  attr_reader :status, :headers, :parser, :sock, :raw

  def initialize(port, path, headers: {}, rcvbuf: nil, host: "127.0.0.1")
    @sock = Socket.new(:INET, :STREAM)
    @sock.setsockopt(:SOCKET, :RCVBUF, rcvbuf) if rcvbuf
    @sock.connect(Socket.sockaddr_in(port, host))
    head = +"GET #{path} HTTP/1.1\r\nHost: #{host}:#{port}\r\nAccept: text/event-stream\r\n"
    headers.each { |k, v| head << "#{k}: #{v}\r\n" }
    @sock.write(head << "\r\n")
    @parser = SSEParser.new
    @pending = +"".b
    @raw = +"".b
    @eof = false
    @chunked = false
    @chunk_left = nil
  end

  def self.open(port, channels, cursor: nil, query: nil, mount: "/stream", **opts)
    path = +"#{mount}?" + Array(channels).map { |c| "channel=#{URI.encode_www_form_component(c)}" }.join("&")
    path << "&#{query}" if query
    headers = opts.delete(:headers) || {}
    headers["Last-Event-ID"] = cursor if cursor
    new(port, path, headers: headers, **opts)
  end

  def events
    @parser.events
  end

  def data
    @parser.data
  end

  def to_io
    @sock
  end

  # Reads whatever is there without blocking. Returns false at EOF.
  def pump
    return false if @eof

    loop do
      chunk = @sock.read_nonblock(65_536, exception: false)
      case chunk
      when :wait_readable then return true
      when nil
        @eof = true
        return false
      else
        @raw << chunk if @raw.bytesize < 1_000_000
        consume(chunk)
      end
    end
  rescue Errno::ECONNRESET, IOError
    @eof = true
    false
  end

  def eof?
    @eof
  end

  def wait_for_head(timeout: 10)
    wait_until(timeout: timeout, message: "response head") { pump || @eof; @status }
  end

  def wait_for_events(count, timeout: 10)
    wait_until(timeout: timeout, message: "#{count} events (have #{events.size})") do
      pump
      events.size >= count || (@eof && raise(Waiting::Timeout, "stream closed after #{events.size} events"))
    end
    events
  end

  def wait_closed(timeout: 10)
    wait_until(timeout: timeout, message: "server to close the stream") do
      pump
      @eof
    end
  end

  def close
    @sock.close unless @sock.closed?
  end

  private

  def consume(bytes)
    if @status.nil?
      @pending << bytes
      i = @pending.index("\r\n\r\n")
      return unless i

      head = @pending.byteslice(0, i)
      rest = @pending.byteslice(i + 4..)
      lines = head.split("\r\n")
      @status = Integer(lines.shift.split(" ")[1])
      @headers = lines.to_h { |l| k, v = l.split(":", 2); [k.downcase, v.to_s.strip] }
      @chunked = @headers["transfer-encoding"].to_s.include?("chunked")
      @pending = +"".b
      bytes = rest
    end
    @chunked ? dechunk(bytes) : @parser.feed(bytes)
  end

  def dechunk(bytes)
    @pending << bytes
    loop do
      if @chunk_left.nil?
        i = @pending.index("\r\n")
        return unless i

        @chunk_left = @pending.byteslice(0, i).to_i(16)
        @pending = @pending.byteslice(i + 2..)
        if @chunk_left.zero?
          @eof = true
          return
        end
      end
      return if @pending.bytesize < @chunk_left + 2

      @parser.feed(@pending.byteslice(0, @chunk_left))
      @pending = @pending.byteslice(@chunk_left + 2..)
      @chunk_left = nil
    end
  end
end

# Many SSE clients read by one thread.
class SSESwarm
  include Waiting

  attr_reader :clients

  def initialize(clients = [])
    @clients = clients
  end

  def <<(client)
    @clients << client
    self
  end

  # A client without a connection right now (to_io nil: one that
  # reconnects, SequenceClient) is pumped to let it try again.
  def pump_all(timeout = 0.05)
    by_io = {}
    @clients.each do |c|
      next if c.eof?

      (io = c.to_io) ? by_io[io] = c : c.pump
    end
    return if by_io.empty?

    ready, = IO.select(by_io.keys, nil, nil, timeout)
    ready&.each { |io| by_io[io].pump }
  end

  def wait_all(timeout: 30, message: "all clients")
    wait_until(timeout: timeout, interval: 0, message: message) do
      pump_all
      @clients.all? { |c| yield c }
    end
  end

  def close_all
    @clients.each(&:close)
  end
end
