# frozen_string_literal: true

require "spec_helper"

# Random HTTP requests at the middleware's mount, over real TCP sockets to a
# real Puma: broken request lines, percent-encodings, channel lists, cursors,
# header names, values and casing, truncated requests. Every answer must be
# a stream or a clean refusal, and afterwards the server must be as it was:
# alive, serving, with no Spillway exception in its log and no descriptor
# left over.
#
#   FUZZ_SEED=123 bundle exec rspec spec/integration/http_fuzz_spec.rb   # replay a run
#   FUZZ_ONLY=417 ...                    # only request 417 of that seed
#   FUZZ_FULL=1 ...                      # 50,000 requests, up to 5 minutes
#   FUZZ_COUNT=... FUZZ_SECONDS=...      # any other bound
#
# Each request is made from its own generator, seeded from the run's seed
# and its index, so one request replays alone whatever the threads did.
module HttpFuzz
  MOUNT = "/events"
  # Puma refuses a method outside this list with its own 501 before the
  # app sees the request (Puma::Const::SUPPORTED_HTTP_METHODS).
  PUMA_METHODS = %w[HEAD GET POST PUT DELETE OPTIONS TRACE PATCH].freeze
  # What a refusal may be: the middleware's 400/403/405/414, the app's 404
  # for paths that are not the mount, Puma's parser's 400/413/414/431 and
  # its 501 for a method it does not know (see PUMA_METHODS). Any other 5xx
  # is a failure: a 500 is an exception in the middleware or the app (Puma's
  # lowlevel error handler), a 503 a stream place that leaked. One exception:
  # see PUMA_EMPTY_LINE_500.
  REFUSALS = [400, 403, 404, 405, 413, 414, 431].freeze
  # Puma 8.0.2 answers 500 itself to a request that starts with an empty
  # line: describing the parse error, Puma::Client#parser_execute splits the
  # buffer and calls a method on nil (logged as "Read: #<NoMethodError ...>").
  # The app never sees such a request, so it says nothing about Spillway.
  PUMA_EMPTY_LINE_500 = "\r\n\r\n"
  # Log lines of that Puma error, the only exceptions the log may name
  # besides Puma's own "HTTP parse error" lines.
  PUMA_EMPTY_LINE_LOG = /Read: #<NoMethodError: undefined method `\w+' for nil/n.freeze
  # Puma's limits (ext/puma_http11): past them the request is refused
  # while it is still being sent, and the kernel may reset the connection
  # before the refusal is read.
  PUMA_HEADER_LIMIT = 112 * 1024
  PUMA_FIELD_LIMIT = 80 * 1024

  Request = Struct.new(:index, :bytes, :method, :truncated, :oracle, keyword_init: true) do
    def oversize?
      bytes.bytesize > PUMA_FIELD_LIMIT
    end

    def to_s
      shown = bytes.bytesize > 600 ? "#{bytes.byteslice(0, 600).inspect}... (#{bytes.bytesize} bytes)" : bytes.inspect
      "request #{index}#{truncated ? ' (truncated)' : ''}: #{shown}"
    end
  end

  # Builds request number `index` of a run.
  class Generator
    PUBLIC = (1..6).map { |i| "public:c#{i}" }.freeze
    PRIVATE = %w[private:admin private:x].freeze
    METHODS = %w[GET GET GET GET GET GET HEAD POST PUT DELETE OPTIONS PATCH TRACE].freeze
    BAD_METHODS = ["get", "G ET", "CONNECT", "FOO", "GET\0", "\xffGET".b, "", "GETGETGETGETGETGETGETGET", "M-SEARCH"].freeze
    PATHS = [MOUNT, MOUNT, MOUNT, MOUNT, "#{MOUNT}/", "/Events", "/EVENTS", "#{MOUNT}/x", "/#{MOUNT}", "/event",
             "#{MOUNT}%2F", "#{MOUNT};a=b", "/ev%65nts", "/%65vents", "#{MOUNT}/..", "/x/..#{MOUNT}", "/stream", "/",
             "*", "http://127.0.0.1#{MOUNT}", "//127.0.0.1#{MOUNT}", "#{MOUNT}%00", "#{MOUNT}\0"].freeze
    # Bytes for values: printable, separators, controls, high bytes.
    ODD_BYTES = ["%", "%%", "%2", "%zz", "%ZZ", "%G1", "%00", "%0D%0A", "%0a", "%C0%AF", "%E0%80%AF", "%F0%80%80%AF",
                 "%ED%A0%80", "%FF", "%FE%FF", "%E2%9C%93", "%E2%9C", "+", "&", "=", ";", "#", "?", "/", "..", " ",
                 "\t", "\0", "\r", "\n", "\r\n", "\xC0\xAF".b, "\xff".b, "\u00e9".b, "\u{1F600}".b, "\\", "\"", "'",
                 "<", ">", "{", "}", "|", "^", "`", "[", "]"].freeze

    def initialize(seed, index)
      @index = index
      @r = Random.new((seed << 24) ^ index)
    end

    def build
      kind = pick(%i[valid valid valid forbidden garbled garbled garbled garbled huge raw])
      bytes, method, oracle = send(kind)
      truncated = kind != :valid && kind != :forbidden && @r.rand < 0.06
      bytes = bytes.byteslice(0, @r.rand(bytes.bytesize)) if truncated
      Request.new(index: @index, bytes: bytes, method: method, truncated: truncated, oracle: oracle)
    end

    private

    def pick(list)
      list[@r.rand(list.size)]
    end

    def chance(p)
      @r.rand < p
    end

    def random_case(s)
      s.chars.map { |c| chance(0.5) ? c.upcase : c.downcase }.join
    end

    # A request the middleware must stream: public channels, a cursor that
    # may or may not parse, header names in any case.
    def valid
      channels = Array.new(1 + @r.rand(4)) { pick(PUBLIC) }
      query = channels.map { |c| "channel=#{encode(c)}" }
      query << "lastEventId=#{cursor_value.b.unpack1('H*').scan(/../).map { |h| "%#{h}" }.join}" if chance(0.2)
      query << "other=#{@r.rand(100)}" if chance(0.2)
      headers = [["Host", "127.0.0.1"]]
      headers << ["Last-Event-ID", cursor_value] if chance(0.3)
      headers << ["Accept", "text/event-stream"] if chance(0.5)
      headers << ["X-Fuzz-#{@r.rand(1000)}", printable(@r.rand(40))] if chance(0.5)
      headers << ["Cache-Control", "no-cache"] if chance(0.3)
      headers.map! { |k, v| [random_case(k), v] }
      [head("GET", "#{MOUNT}?#{query.shuffle(random: @r).join('&')}", "HTTP/1.1", headers), "GET", :stream]
    end

    # Well formed, but only private channels: authorize refuses them.
    def forbidden
      channels = Array.new(1 + @r.rand(3)) { pick(PRIVATE) }
      [head("GET", "#{MOUNT}?#{channels.map { |c| "channel=#{c}" }.join('&')}", "HTTP/1.1", [["Host", "x"]]), "GET",
       :forbidden]
    end

    def garbled
      method = chance(0.85) ? pick(METHODS) : pick(BAD_METHODS)
      target = pick(PATHS)
      target += "?#{garbled_query}" if chance(0.9)
      target += "##{fragment}" if chance(0.05)
      version = chance(0.9) ? "HTTP/1.1" : pick(["HTTP/1.0", "HTTP/2.0", "HTTP/1.1 x", "http/1.1", "HTTP/9", "", "HTTP/1.1\0"])
      headers = garbled_headers
      body = +""
      if chance(0.1)
        body = printable(@r.rand(100))
        headers << [random_case("Content-Length"), body.bytesize.to_s]
      elsif chance(0.05)
        headers << [random_case("Transfer-Encoding"), "chunked"]
        body = "5\r\nhello\r\n0\r\n\r\n"
      elsif chance(0.05)
        headers << [random_case("Content-Length"), pick(["-1", "abc", "1, 2", "0x10", ""])]
      end
      headers << ["Expect", "100-continue"] if chance(0.03)
      eol = chance(0.95) ? "\r\n" : "\n"
      [head(method, target, version, headers, eol) + body, method, nil]
    end

    # One huge part: a query, a header, many channels or many headers.
    def huge
      case @r.rand(5)
      when 0 then query = Array.new(1 + @r.rand(3000)) { "channel=#{pick(PUBLIC)}#{@r.rand(10_000)}" }.join("&")
      when 1 then query = "channel=public:#{'a' * @r.rand(20_000)}"
      when 2 then query = "channel=public:a&lastEventId=#{'9' * @r.rand(20_000)}"
      end
      headers = [["Host", "h"]]
      headers << ["Last-Event-ID", "1" * @r.rand(150_000)] if query.nil? && chance(0.5)
      headers += Array.new(@r.rand(300)) { |i| ["X-H#{i}", printable(@r.rand(500))] } if query.nil?
      [head("GET", "#{MOUNT}?#{query || 'channel=public:c1'}", "HTTP/1.1", headers), "GET", nil]
    end

    # Bytes that are barely a request.
    def raw
      len = @r.rand(200)
      junk = Array.new(len) { @r.rand(256).chr }.join.b
      [pick(["", "GET ", "GET #{MOUNT}", "GET #{MOUNT}?channel=public:c1 HTTP/1.1\r\n"]).b + junk + "\r\n\r\n", nil, nil]
    end

    def head(method, target, version, headers, eol = "\r\n")
      line = version.empty? ? "#{method} #{target}" : "#{method} #{target} #{version}"
      out = (+"").b
      out << line.b << eol
      headers.each { |k, v| out << k.b << ":" << (chance(0.9) ? " " : "") << v.b << eol }
      out << eol
    end

    def garbled_query
      params = Array.new(@r.rand(12)) do
        case @r.rand(8)
        when 0, 1, 2 then "channel=#{channel_value}"
        when 3 then "lastEventId=#{odd_value}"
        when 4 then "#{random_case('channel')}=#{channel_value}"
        when 5 then odd_value
        when 6 then "channel"
        else "#{odd_value}=#{odd_value}"
        end
      end
      params += Array.new(@r.rand(60)) { "channel=#{channel_value}" } if chance(0.1)
      params.join(pick(["&", "&", "&", ";", "&&", "&=&"]))
    end

    def channel_value
      case @r.rand(6)
      when 0, 1 then encode(pick(PUBLIC + PRIVATE))
      when 2 then pick(PUBLIC) + odd_value
      when 3 then ""
      when 4 then "public:#{'x' * @r.rand(300)}"
      else odd_value
      end
    end

    def odd_value
      Array.new(@r.rand(6)) { chance(0.5) ? pick(ODD_BYTES) : printable(1 + @r.rand(4)) }.join
    end

    def cursor_value
      case @r.rand(6)
      when 0 then "#{1_700_000_000_000 + @r.rand(10**12)}-#{@r.rand(100)}"
      when 1 then @r.rand(10**20).to_s
      when 2 then ""
      when 3 then "-" * (1 + @r.rand(5))
      when 4 then printable(@r.rand(64))
      else "#{@r.rand(10**13)}-#{@r.rand(10**20)}"
      end
    end

    def garbled_headers
      headers = []
      headers << ["Host", pick(["127.0.0.1", "", "x" * 300, "a b", "h\0st"])] if chance(0.8)
      if chance(0.5)
        name = random_case(pick(["Last-Event-ID", "Last-Event-Id", "last_event_id", "Last-Event-ID ", "Last-Event-ID\0"]))
        headers << [name, chance(0.5) ? cursor_value : odd_value]
      end
      headers << [random_case("Last-Event-ID"), cursor_value] if chance(0.1)
      Array.new(@r.rand(6)) do
        name = chance(0.8) ? random_case(pick(%w[Accept Origin Cookie Connection Referer X-Forwarded-For X-Thing])) : odd_value
        value = chance(0.5) ? printable(@r.rand(80)) : odd_value
        headers << [name, value]
      end
      headers.shuffle(random: @r)
    end

    def fragment
      printable(@r.rand(30))
    end

    def printable(n)
      Array.new(n) { (32 + @r.rand(95)).chr }.join
    end

    def encode(s)
      s.gsub(/[^A-Za-z0-9_.\-]/) { |c| chance(0.5) ? format("%%%02X", c.ord) : c }
    end
  end

  # What came back for one request.
  Outcome = Struct.new(:kind, :status, :headers, :head, :detail, keyword_init: true)

  module_function

  def exchange(port, req, timeout)
    deadline = Waiting.monotonic + timeout
    sock = Socket.tcp("127.0.0.1", port, connect_timeout: timeout)
    write_failed = write_all(sock, req.bytes, deadline)
    sock.shutdown(:WR) if req.truncated && !write_failed
    read_head(sock, deadline)
  rescue Errno::ECONNREFUSED => e
    Outcome.new(kind: :refused, detail: e.message)
  ensure
    sock&.close
  end

  # Sends everything the server takes; true when it stopped taking.
  def write_all(sock, bytes, deadline)
    until bytes.empty?
      n = sock.write_nonblock(bytes, exception: false)
      if n == :wait_writable
        left = deadline - Waiting.monotonic
        return true if left <= 0 || !sock.wait_writable(left)

        next
      end
      bytes = bytes.byteslice(n..)
    end
    false
  rescue Errno::EPIPE, Errno::ECONNRESET
    true
  end

  # The first final response head (a 100 Continue is skipped).
  def read_head(sock, deadline)
    buf = (+"").b
    loop do
      if (i = buf.index("\r\n\r\n"))
        head = buf.byteslice(0, i)
        buf = buf.byteslice(i + 4..)
        lines = head.split("\r\n")
        status = lines.shift.to_s[%r{\AHTTP/1\.[01] (\d{3}) }, 1]&.to_i
        return Outcome.new(kind: :malformed, head: head) unless status
        next if status == 100

        headers = lines.to_h { |l| k, v = l.split(":", 2); [k.downcase, v.to_s.strip] }
        return Outcome.new(kind: :response, status: status, headers: headers, head: head)
      end
      return Outcome.new(kind: :malformed, head: buf.byteslice(0, 300)) if buf.bytesize > 65_536

      chunk = sock.read_nonblock(65_536, exception: false)
      case chunk
      when nil then return Outcome.new(kind: :eof, head: buf)
      when :wait_readable
        left = deadline - Waiting.monotonic
        return Outcome.new(kind: :timeout, head: buf) if left <= 0 || !sock.wait_readable(left)
      else buf << chunk
      end
    end
  rescue Errno::ECONNRESET => e
    Outcome.new(kind: :reset, head: buf, detail: e.message)
  end

  # nil when the outcome is acceptable for the request, else why not.
  def judge(req, out)
    case out.kind
    when :response
      status = out.status
      if req.oracle == :stream && status != 200
        return "a well-formed request for public channels got #{status}, not a stream"
      end
      return "a request for private channels only got #{status}, not 403" if req.oracle == :forbidden && status != 403

      if (200..299).cover?(status)
        return "#{status} with content-type #{out.headers['content-type'].inspect}" unless
          out.headers["content-type"].to_s.start_with?("text/event-stream")

        nil
      elsif REFUSALS.include?(status)
        nil
      elsif status == 501 && !PUMA_METHODS.include?(req.method)
        nil # Puma's own refusal of a method it does not know, before the app.
      elsif status == 500 && req.bytes.start_with?(PUMA_EMPTY_LINE_500)
        nil
      else
        "status #{status}"
      end
    when :eof, :reset
      # A request that never ended, or one Puma refused while it was still
      # arriving (the kernel's reset may eat the refusal).
      return nil if req.truncated || req.oversize?

      "the connection #{out.kind == :eof ? 'closed' : 'was reset'} without an answer"
    when :timeout then req.truncated ? "no answer to a truncated request, not even EOF" : "no answer in time"
    when :malformed then "a malformed answer: #{out.head.inspect}"
    else "#{out.kind}: #{out.detail}"
    end
  end

  def fd_count(pid)
    Dir.children("/proc/#{pid}/fd").size
  rescue Errno::ENOENT
    nil
  end

  # "socket: 12, pipe: 2, ..." for a failure message.
  def fd_kinds(pid)
    Dir.children("/proc/#{pid}/fd").map do |fd|
      File.readlink("/proc/#{pid}/fd/#{fd}")[/\A[^:\[]+/]
    rescue Errno::ENOENT
      "closed meanwhile"
    end.tally.map { |k, v| "#{k}: #{v}" }.join(", ")
  end
end

RSpec.describe "HTTP fuzz of the middleware (real Puma, real sockets)" do
  full = ENV["FUZZ_FULL"] == "1"
  seed = Integer(ENV.fetch("FUZZ_SEED") { Random.new_seed % 2**31 })
  count = Integer(ENV.fetch("FUZZ_COUNT", full ? 50_000 : 3000))
  seconds = Float(ENV.fetch("FUZZ_SECONDS", full ? 300 : 15))
  only = ENV["FUZZ_ONLY"] && Integer(ENV["FUZZ_ONLY"])
  workers = 4
  replay = "FUZZ_SEED=#{seed}"

  before(:all) do
    @server = AppServer.new(threads: "4:4", middleware: { mount: HttpFuzz::MOUNT, authorize: "public_only" }).start
  end

  after(:all) { @server&.stop }

  let(:server) { @server }

  def answer_timeout
    10 * Waiting::SLOW
  end

  # One stream that gets one message: the hub runs and the server serves.
  def check_stream(tag)
    client = SSEClient.open(server.port, "public:#{tag}", mount: HttpFuzz::MOUNT)
    client.wait_for_head
    expect(client.status).to eq(200)
    wait_until(message: "the #{tag} stream attached") { server.stats[:connections] == 1 }
    server.publish("public:#{tag}", "hello #{tag}")
    expect(client.wait_for_events(1).map(&:data)).to eq(["hello #{tag}"])
  ensure
    client&.close
    wait_until(message: "the #{tag} stream released") { server.stats[:connections].zero? }
  end

  it "answers every random request with a stream or a clean refusal and is unharmed afterwards" do
    check_stream("warmup")
    expect(server.get("#{HttpFuzz::MOUNT}?channel=private:x").code).to eq("403")
    pid = server.pid
    baseline = HttpFuzz.fd_count(pid)

    indices = only ? [only] : (0...count).to_a
    next_i = 0
    lock = Mutex.new
    failures = []
    tally = Hash.new(0)
    deadline = Waiting.monotonic + seconds
    threads = Array.new(only ? 1 : workers) do
      Thread.new do
        loop do
          i = lock.synchronize do
            break nil if next_i >= indices.size || failures.size >= 5 || Waiting.monotonic > deadline

            next_i += 1
            indices[next_i - 1]
          end
          break unless i

          req = HttpFuzz::Generator.new(seed, i).build
          begin
            out = HttpFuzz.exchange(server.port, req, answer_timeout)
            why = HttpFuzz.judge(req, out)
          rescue StandardError => e
            out = HttpFuzz::Outcome.new(kind: :client_error, detail: "#{e.class}: #{e.message}")
            why = "the client failed: #{out.detail}"
          end
          lock.synchronize do
            tally[out.kind == :response ? out.status : out.kind] += 1
            failures << "#{why}\n  #{req}\n  answer: #{(out.head || out.detail).inspect[0, 400]}" if why
          end
        end
      end
    end
    threads.each(&:join)
    done = tally.values.sum
    took = (seconds - (deadline - Waiting.monotonic)).round(1)
    summary = "#{replay}: #{done} requests in #{took} s, answers #{tally.sort_by { |k, _| k.to_s }.to_h}"
    puts summary if ENV["FUZZ_VERBOSE"] || full
    expect(failures).to be_empty, "#{summary}\n#{failures.join("\n")}\nReplay with #{replay} (FUZZ_ONLY=<index> for one)"
    expect(done).to be >= [indices.size, 200].min, summary

    # The server lives, answers, streams and publishes as before.
    expect(server.exited?).to be(false), "#{replay}: Puma exited; log:\n#{server.log_tail}"
    expect(server.get("/ping").body).to eq("pong")
    wait_until(timeout: 20, message: "#{replay}: every fuzz stream released") { server.stats[:connections].zero? }
    check_stream("after")

    # No exception from the app or Spillway reached Puma.
    log = File.binread(server.log)
    suspicious = log.lines.grep(%r{#<[\w:]*(Error|Exception)|lib/spillway|Rack app \(|reached top|\[BUG\]|ERROR -- spillway}n)
    suspicious.reject! { |l| l.include?("HTTP parse error, malformed request") || l.match?(HttpFuzz::PUMA_EMPTY_LINE_LOG) }
    expect(suspicious).to be_empty, "#{replay}: in the Puma log:\n#{suspicious.first(20).join}"

    # Every descriptor of the fuzz (sockets, stream copies) is closed again.
    fds = nil
    begin
      wait_until(timeout: 20) { (fds = HttpFuzz.fd_count(pid)) && fds <= baseline }
    rescue Waiting::Timeout
      raise "#{replay}: Puma holds #{fds} descriptors 20 s after the fuzz, #{baseline} before it " \
            "(#{HttpFuzz.fd_kinds(pid)})"
    end
  end
end
