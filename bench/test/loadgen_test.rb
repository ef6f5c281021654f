# frozen_string_literal: true

# Tests of the loadgen's parsers against crafted responses, sent in small
# pieces so every boundary case (CRLF split across reads, chunk sizes in the
# middle of a line, ...) is exercised. Run: ruby bench/test/loadgen_test.rb
# (builds the tools first with make -C bench).
require "minitest/autorun"
require "json"
require "socket"

BENCH_DIR = File.expand_path("..", __dir__)
system("make", "-s", "-C", BENCH_DIR) or abort "make -C bench failed"

class LoadgenTest < Minitest::Test
  # Serves `chunks` (an Array of Strings, written one by one with a pause; a
  # Numeric in it is a longer pause, in seconds) to the first connection, then
  # closes it (after keep_open seconds when given). Returns the loadgen's JSON
  # summary.
  def run_loadgen(chunks, args, keep_open: false, requests: 1)
    server = TCPServer.new("127.0.0.1", 0)
    port = server.addr[1]
    seen = []
    th = Thread.new do
      requests.times do |i|
        c = server.accept
        seen << c.readpartial(65_536)
        Array(chunks.is_a?(Proc) ? chunks.call(i) : chunks).each do |s|
          next sleep(s) if s.is_a?(Numeric)

          c.write(s)
          c.flush
          sleep 0.01
        end
        sleep(keep_open == true ? 0.3 : keep_open) if keep_open
        c.close
      end
    rescue IOError, SystemCallError
      nil
    end
    out = IO.popen([File.join(BENCH_DIR, "loadgen"), "-q", *args, "-t", "5",
                    yield(port)], err: File::NULL, &:read)
    @status = $?
    th.join(2)
    server.close
    @requests = seen
    JSON.parse(out.lines.last)
  end

  def stamp(seq)
    "#{seq} #{Process.clock_gettime(Process::CLOCK_REALTIME, :nanosecond)}"
  end

  def test_sse_line_endings_comments_and_multiline_data
    body = +"\xEF\xBB\xBF: hello\r\n\r\n"
    body << "id: 1\rdata: #{stamp(1)}\rdata: second line\r\r"         # CR only
    body << "event: x\ndata:#{stamp(2)}\n\n"                          # LF, no space after ':'
    body << "retry: 1000\r\ndata: #{stamp(3)}\r\n\r\n"                # CRLF
    body << "data\n\n"                                                # empty data: dispatched, not a message
    body << "id: 4\n\n"                                               # no data: not dispatched
    body << "data: #{stamp(5)}\r\n\r\n"
    head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    # split every few bytes, including between the CR and LF of a CRLF
    pieces = [head] + body.b.scan(/.{1,3}/mn)
    r = run_loadgen(pieces, %w[-c 1 -e 5]) { |p| "http://127.0.0.1:#{p}/sub" }
    assert_equal 1, r["connected"]
    assert_equal 4, r["messages"]
    assert_equal 1, r["other_events"] # "data" with an empty value
    assert_equal 1, r["lost"]          # seq 4 never came
    assert_equal 1, r["missing"]
    assert_equal 0, r["dup"]
    assert_equal 1, r["comments"]
    assert_equal 1, r["closed_by_server"]
    assert_match %r{\AGET /sub HTTP/1.1\r\n}, @requests[0]
  end

  def test_sse_chunked_with_dups_and_out_of_order
    events = [1, 2, 2, 4, 3, 5].map { |s| "data: #{stamp(s)}\n\n" }.join
    # chunk sizes that cut lines and the stamp in the middle
    chunks = events.b.scan(/.{1,7}/mn).map { |c| "#{c.bytesize.to_s(16)}\r\n#{c}\r\n" }
    pieces = ["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", *chunks, "0\r\n\r\n"]
    r = run_loadgen(pieces, %w[-c 1 -e 5]) { |p| "http://127.0.0.1:#{p}/sub" }
    assert_equal 6, r["messages"]
    assert_equal 1, r["dup"]
    assert_equal 1, r["ooo"]
    assert_equal 0, r["lost"]
    assert_equal 0, r["missing"]
    assert_equal 1, r["closed_by_server"]
  end

  def test_stop_after_m_messages
    events = (1..3).map { |s| "data: #{stamp(s)}\n\n" }.join
    r = run_loadgen(["HTTP/1.1 200 OK\r\n\r\n", events], %w[-c 1 -M 3 -e 3], keep_open: true) do |p|
      "http://127.0.0.1:#{p}/sub"
    end
    assert_equal 3, r["messages"]
    assert_equal 1, r["conns_with_all"]
    assert_equal 0, r["closed_by_server"]
  end

  def test_non_200_counts_as_failed_after_retries
    r = run_loadgen(["HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"], %w[-c 1 -r 1], requests: 2) do |p|
      "http://127.0.0.1:#{p}/sub"
    end
    assert_equal 0, r["connected"]
    assert_equal 1, r["failed"]
    assert_equal 1, r["retries"]
    assert_equal 2, r["errors"]["bad_status"]
  end

  def test_message_bus_streaming_and_repoll
    sep = "\r\n|\r\n"
    chunk = ->(s) { "#{s.bytesize.to_s(16)}\r\n#{s}\r\n" }
    msg = ->(id, data) { { global_id: id + 100, message_id: id, channel: "/c", data: data } }
    polls = lambda do |i|
      head = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n" \
             "Transfer-Encoding: chunked\r\n\r\n"
      if i.zero?
        status = [{ global_id: -1, message_id: -1, channel: "/__status", data: { "/c" => 0 } }]
        both = JSON.dump([msg.(1, stamp(1)), { global_id: 9, message_id: 9, channel: "/other", data: "x" }]) + sep +
               JSON.dump([msg.(2, stamp(2))])
        [head, chunk.(JSON.dump(status) + sep), chunk.(both + sep)[0, 30], chunk.(both + sep)[30..], chunk.("[]" + sep), "0\r\n\r\n"]
      else
        # the second poll: a message whose data holds an escaped separator and quotes
        [head, chunk.(JSON.dump([msg.(3, "#{stamp(3)} \"q\" \\ \r\n||\r\n")]) + sep), "0\r\n\r\n"]
      end
    end
    r = run_loadgen(polls, %w[-m mb -C /c -c 1 -M 3 -e 3], requests: 2) { |p| "http://127.0.0.1:#{p}/message-bus" }
    assert_equal 3, r["messages"]
    assert_equal 0, r["missing"]
    assert_operator r["repolls"], :>=, 1 # and it polls again after the second one ends
    assert_match %r{\APOST /message-bus/lg\d+x0/poll HTTP/1.1\r\n}, @requests[0]
    assert_match(/\r\n\r\n%2Fc=-1&__seq=1\z/, @requests[0])
    assert_match(/\r\n\r\n%2Fc=2&__seq=2\z/, @requests[1]) # polls again from the last id seen
  end

  SSE_HEAD = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"

  def sse(seq)
    "data: #{stamp(seq)}\n\n"
  end

  # The reconnect storm's resume: the cursor goes out as Last-Event-ID, a
  # message from before it counts as stale (a duplicate), and the stream is
  # served when it has the messages after it.
  def test_sse_resume_from_last_event_id
    r = run_loadgen([SSE_HEAD, sse(1), sse(2), sse(3), sse(4)], %w[-c 1 -I 17-0 -B 1 -e 3 -M 3], keep_open: 1) do |p|
      "http://127.0.0.1:#{p}/sub"
    end
    assert_match(/\r\nLast-Event-ID: 17-0\r\n/, @requests[0])
    assert_equal 1, r["stale"]
    assert_equal 1, r["dup"]
    assert_equal 0, r["missing"]
    assert_equal 0, r["lost"]
    assert_equal 1, r["served"]["streams"]
    assert_equal 3, r["served"]["want"]
    assert_operator r["served"]["from_start_ms"]["max"], :>=, r["served"]["from_head_ms"]["max"]
    assert_operator r["served"]["from_head_ms"]["max"], :>=, 0
    assert_equal 0, r["closed_by_server"] # it stopped because it was served, not at the close
  end

  # A duplicate must not stand in for a message still owed: the stream is
  # served only once seq 3 arrives, half a second after the duplicate.
  def test_served_counts_unique_messages
    r = run_loadgen([SSE_HEAD, sse(2), sse(2), 0.5, sse(3)], %w[-c 1 -B 1 -e 2 -M 2], keep_open: 1) do |p|
      "http://127.0.0.1:#{p}/sub"
    end
    assert_equal 0, r["missing"]
    assert_equal 1, r["dup"]
    assert_equal 1, r["served"]["streams"]
    assert_operator r["served"]["from_head_ms"]["max"], :>=, 400
  end

  # -G: once served, the loadgen reads on, so a stale message sent right
  # after the owed ones still counts.
  def test_linger_counts_a_late_duplicate
    r = run_loadgen([SSE_HEAD, sse(2), sse(3), 0.3, sse(1)], %w[-c 1 -B 1 -e 2 -M 2 -G 1], keep_open: 3) do |p|
      "http://127.0.0.1:#{p}/sub"
    end
    assert_equal 1, r["stale"]
    assert_equal 0, r["missing"]
    assert_equal 0, r["closed_by_server"] # it stopped after the linger, not at the close
  end

  def test_message_bus_resume_polls_from_the_cursor
    chunk = ->(s) { "#{s.bytesize.to_s(16)}\r\n#{s}\r\n" }
    msg = ->(id, seq) { { global_id: id, message_id: id, channel: "/c", data: stamp(seq) } }
    # message_bus answers a poll with a backlog at once, in a plain JSON array.
    polls = lambda do |i|
      if i.zero?
        body = JSON.dump([msg.(6, 2), msg.(7, 3)])
        ["HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: #{body.bytesize}\r\n\r\n#{body}"]
      else
        ["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", chunk.("[]\r\n|\r\n"), 1]
      end
    end
    r = run_loadgen(polls, %w[-m mb -C /c -c 1 -I 5 -B 1 -e 2 -M 2], requests: 2) do |p|
      "http://127.0.0.1:#{p}/message-bus"
    end
    assert_match(/\r\n\r\n%2Fc=5&__seq=1\z/, @requests[0])
    assert_equal 0, r["missing"]
    assert_equal 1, r["served"]["streams"]
  end

  # lp: each answer is a complete SSE body with Content-Length; the next poll
  # goes out at once and carries the last id of the answer as its cursor.
  def test_long_poll_repolls_from_the_last_id
    answer = lambda do |*pairs|
      body = pairs.map { |id, seq| "id: #{id}\ndata: #{stamp(seq)}\n\n" }.join
      ["HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: #{body.bytesize}\r\n" \
       "Connection: close\r\n\r\n#{body[0, 7]}", body[7..]]
    end
    polls = ->(i) { i.zero? ? answer.(["7-0", 1], ["7-1", 2]) : answer.(["9-0", 3]) }
    r = run_loadgen(polls, %w[-m lp -c 1 -I 5-0 -e 3 -M 3], requests: 2) do |p|
      "http://127.0.0.1:#{p}/stream?channel=c&transport=long-poll"
    end
    assert_equal 3, r["messages"]
    assert_equal 0, r["missing"]
    assert_equal 0, r["dup"]
    assert_equal "lp", r["mode"]
    assert_match(%r{\AGET /stream\?channel=c&transport=long-poll HTTP/1.1\r\n}, @requests[0])
    assert_match(/\r\nLast-Event-ID: 5-0\r\n/, @requests[0])
    assert_match(/\r\nLast-Event-ID: 7-1\r\n/, @requests[1]) # from the answer, not -I
  end

  # A poll is connected once its request is out: a server that says nothing
  # until a message exists still lets the run go "ready".
  def test_long_poll_counts_connected_when_held
    r = run_loadgen(["HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"], %w[-m lp -c 1 -r 0], keep_open: 0.5) do |p|
      "http://127.0.0.1:#{p}/stream?channel=c&transport=long-poll"
    end
    assert_equal 1, r["connected"]
    assert_equal 0, r["failed"]
  end

  def test_message_bus_plain_long_poll_asks_not_to_chunk
    body = JSON.dump([{ global_id: -1, message_id: -1, channel: "/__status", data: { "/c" => 4 } }])
    r = run_loadgen(["HTTP/1.1 200 OK\r\nContent-Length: #{body.bytesize}\r\n\r\n#{body}"], %w[-m mb-lp -C /c -c 1],
                    requests: 2) { |p| "http://127.0.0.1:#{p}/message-bus" }
    assert_equal "mb-lp", r["mode"]
    assert_match(/\r\nDont-Chunk: true\r\n/, @requests[0])
    assert_match(/\r\n\r\n%2Fc=4&__seq=2\z/, @requests[1]) # the status answer's position
  end

  def test_message_bus_cursor_must_be_an_id
    out = IO.popen([File.join(BENCH_DIR, "loadgen"), "-m", "mb", "-C", "/c", "-I", "12-0",
                    "http://127.0.0.1:9/message-bus"], err: %i[child out], &:read)
    refute $?.success?
    assert_match(/needs a message id/, out)
  end
end
