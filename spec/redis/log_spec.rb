# frozen_string_literal: true

require "spec_helper"
require "logger"
require "stringio"

# The hub's errors and resets reach Spillway.logger (written by a Ruby
# thread, rate-limited per kind): in a real Puma against a real Redis that
# is killed and restarted, for a reset after a trimmed backlog, for a flood
# of identical errors; and in this process for the thread's life cycle.
RSpec.describe "Native errors and resets in the log" do
  LINE = /Spillway: (?<kind>\w+): (?<message>.*?)(?: \((?<count>\d+) times in the last [\d.]+(?:s| ms)\))?$/.freeze

  # [level, kind, count, message] of every Spillway line of a Logger's output.
  def entries(text)
    text.each_line.filter_map do |line|
      next unless (m = LINE.match(line.chomp))

      level = line[/\A([A-Z]), \[/, 1]
      [level, m[:kind], Integer(m[:count] || 1), m[:message]]
    end
  end

  def counted(list, kind)
    list.select { |e| e[1] == kind }.sum { |e| e[2] }
  end

  # Occurrences of the kinds stats[:errors] counts (all but the warnings
  # about streams).
  def counted_errors(list)
    list.reject { |e| %w[reset slow_client].include?(e[1]) }.sum { |e| e[2] }
  end

  describe "in a Puma" do
    before { @redis = RedisServer.new.start }

    after do
      @server&.stop
      @redis&.cleanup
    end

    def start_app(**config)
      @server = AppServer.new(config: { redis_url: @redis.url, log_interval: 1, connect_timeout: 0.3 }.merge(config)).start
    end

    def log
      entries(File.read(@server.log))
    end

    it "logs the link errors of a Redis killed and restarted, the repeats summed up with their count" do
      start_app
      client = SSEClient.open(@server.port, "watched")
      client.wait_for_head
      wait_until(message: "Redis links up") { @server.stats[:redis_connected] }

      @redis.kill
      # Reconnects back off from 50 ms: refused attempts, the first of them
      # (or the first failure of any kind) at once, the others summed up a
      # second later.
      wait_until(timeout: 10, message: "a refusal in the log (#{log.inspect})") do
        log.any? { |e| e[1] == "redis_connect" && e[3].include?("connect: Connection refused") && e[2] > 1 }
      end
      @redis.start
      wait_until(timeout: 20, message: "Redis links up again") { @server.stats[:redis_connected] }

      # Every error the hub counted is in the log once the last summary is
      # out (at most log_interval after the last error).
      errors = @server.stats[:errors]
      wait_until(timeout: 10, message: "#{errors} errors in the log (#{log.inspect})") do
        counted_errors(log) == errors
      end
      list = log
      link = list.select { |e| e[1] == "redis_link" }
      connect = list.select { |e| e[1] == "redis_connect" }
      expect(link.first[3]).to match(/Redis \w+ link: recv: connection closed by Redis/)
      expect(connect.map { |e| e[3] }).to all(match(/Redis \w+ link: \w+: /))
      expect((link + connect).map(&:first).uniq).to eq(["W"])
      # The first refusal at once, the rest as summaries: fewer lines than
      # refusals, and at least one line standing for several.
      expect(connect.size).to be < counted(list, "redis_connect")
      expect(connect.map { |e| e[2] }.max).to be > 1
      expect(@server.stats[:last_error]).to match(/Redis \w+ link/)
    ensure
      client&.close
    end

    it "logs a reset with its channel and reason" do
      start_app(backlog_size: 5)
      client = SSEClient.open(@server.port, "trimmed")
      client.wait_for_head
      wait_until { @server.stats[:redis_connected] }
      first = @server.publish("trimmed", "1")
      client.wait_for_events(1)
      client.close
      # Redis trims approximately, in nodes of 100 entries: well past it.
      @server.post("/publish_seq?channel=trimmed&count=300&from=2")
      late = SSEClient.open(@server.port, "trimmed", cursor: first)
      expect(late.wait_for_events(1).first.type).to eq("reset")

      wait_until(message: "a reset line") { log.any? { |e| e[1] == "reset" } }
      reset = log.find { |e| e[1] == "reset" }
      expect(reset[0]).to eq("W")
      expect(reset[3]).to eq("stream reset on trimmed (the backlog no longer reaches back to the Last-Event-ID)")
      expect(@server.stats[:errors]).to eq(0) # a reset is not an error
    ensure
      [client, late].compact.each(&:close)
    end

    it "turns a flood of 1,000 identical errors into a handful of lines that count all of them" do
      start_app
      client = SSEClient.open(@server.port, "flood")
      client.wait_for_head
      wait_until(message: "subscribed") do
        @server.stats[:joining].zero? && @redis.call("PUBSUB", "NUMSUB", "spillway:flood")[1] == 1
      end
      # Messages without a Spillway id: each one is an error of the hub.
      @redis.call("EVAL", "for i = 1, 1000 do redis.call('PUBLISH', KEYS[1], 'junk ' .. i) end", "1",
                  "spillway:flood")
      wait_until(message: "1000 errors") { @server.stats[:errors] == 1000 }
      # By their text, whatever kind they are filed under.
      junk = -> { log.select { |e| e[3].include?("without a Spillway id on spillway:flood") } }
      wait_until(timeout: 10, message: "all 1000 in the log (#{log.inspect})") { junk.call.sum { |e| e[2] } == 1000 }
      lines = junk.call
      # One line when the whole burst arrived before the logger thread ran,
      # otherwise the first one and a summary.
      expect(lines.size).to be_between(1, 5)
      expect(lines.map(&:first).uniq).to eq(["E"])
      expect(lines.map { |e| e[1] }.uniq.size).to eq(1)
      expect(log.size).to eq(lines.size) # nothing else went wrong
    ensure
      client&.close
    end
  end

  describe "in this process" do
    before do
      @out = StringIO.new
      @down = RedisServer.new # never started: every connect is refused
    end

    after { @down.cleanup }

    def configure(**extra)
      Spillway.configure(redis_url: @down.url, connect_timeout: 0.2, logger: Logger.new(@out), **extra)
    end

    def log_threads
      Thread.list.select { |t| t.name == "spillway-log" && t.alive? }
    end

    it "writes from a thread of its own that starts with the hub and ends with it, the last summaries written" do
      configure(log_interval: 3600)
      expect(log_threads).to be_empty
      Spillway.publish("x", "y", async: true) # starts the hub, which cannot reach Redis
      expect(log_threads.size).to eq(1)
      wait_until(message: "the first refusal") { entries(@out.string).any? { |e| e[1] == "redis_connect" } }
      first = entries(@out.string).first[2]
      wait_until(message: "more refusals") { Spillway.stats[:errors] > first }
      # Within the hour-long interval nothing more is written, until the
      # stop hands over the summary.
      expect(entries(@out.string).size).to eq(1)
      hub = Spillway.hub
      Spillway.shutdown
      expect(log_threads).to be_empty
      errors = hub.stats[:errors] # the stopped hub still answers
      list = entries(@out.string)
      expect(list.map { |e| e[1] }).to eq(%w[redis_connect redis_connect])
      expect(counted_errors(list)).to eq(errors)
    end

    it "keeps the thread alive through a logger that raises" do
      bad = Object.new
      def bad.warn(*) = raise(IOError, "disk full")
      configure(log_interval: 0.05)
      Spillway.configure(logger: bad)
      err = StringIO.new
      old = $stderr
      $stderr = err
      Spillway.publish("x", "y", async: true)
      wait_until(message: "two lines on stderr") { err.string.lines.size >= 2 }
      expect(err.string).to include("Spillway: redis_connect:").and include("[Spillway.logger failed: IOError: disk full]")
      expect(log_threads.size).to eq(1)
    ensure
      Spillway.shutdown
      $stderr = old if old
    end

    it "starts a thread of its own in a forked child" do
      configure(log_interval: 3600)
      Spillway.publish("x", "y", async: true)
      wait_until { entries(@out.string).any? }
      reader, writer = IO.pipe
      pid = fork do
        reader.close
        child_out = StringIO.new
        Spillway.configure(logger: Logger.new(child_out))
        Spillway.publish("x", "in the child", async: true)
        wait_until(timeout: 10) { entries(child_out.string).any? { |e| e[1] == "redis_connect" } }
        writer.write(JSON.generate(threads: log_threads.size, line: entries(child_out.string).first[3]))
        writer.close
        exit!(0)
      end
      writer.close
      result = JSON.parse(reader.read)
      Process.wait(pid)
      expect($?.success?).to be(true)
      expect(result["threads"]).to eq(1)
      expect(result["line"]).to match(/connect: Connection refused/)
    ensure
      reader&.close
    end
  end
end
