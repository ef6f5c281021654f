# frozen_string_literal: true

require "spec_helper"

# While another process publishes a numbered sequence on several channels,
# the LISTEN connections of both Pumas are killed (pg_terminate_backend) on
# a schedule and PostgreSQL is restarted (fast shutdown: every connection
# dropped, the publisher's too). Streams on one, two and three channels
# reconnect like a browser's EventSource when closed; a quarter long-poll.
# Every stream must end with every number of each of its channels once and
# in order, and with nothing lost for good (the table keeps everything)
# there is no reset either.
RSpec.describe "PostgreSQL faults during numbered publishing", if: Spillway::Native::POSTGRES && PostgresServer.available? do
  CHANNELS = %w[a b c].freeze
  CHANNEL_SETS = [%w[a], %w[a b], %w[a b c], %w[b c]].freeze

  let(:per_channel) { Integer(ENV.fetch("FAULTS_COUNT", 1_000)) }
  let(:rate) { 450 } # messages per second over all channels
  let(:streams_per_server) { Integer(ENV.fetch("FAULTS_STREAMS", 24)) }

  after do
    @faults&.kill
    @publisher_pid && (Process.kill("KILL", @publisher_pid) rescue nil) && (Process.wait(@publisher_pid) rescue nil)
    @servers&.each(&:stop)
    @pg&.cleanup
  end

  def progress
    text = File.exist?(@progress_file) ? File.read(@progress_file) : "0 0"
    n, retries, done = text.split
    [Integer(n), Integer(retries), done == "done"]
  end

  def start_publisher(url)
    @progress_file = File.join(@pg.dir, "progress")
    lib = File.expand_path("../../lib", __dir__)
    script = File.expand_path("../fixtures/numbered_publisher.rb", __dir__)
    log = File.join(@pg.dir, "publisher.log")
    @publisher_pid = Process.spawn({ "PUBLISHER_BACKLOG" => "10000" }, RbConfig.ruby, "-I#{lib}", script, url,
                                   CHANNELS.join(","), per_channel.to_s, rate.to_s, @progress_file, out: log, err: log)
  end

  def open_streams(server)
    Array.new(streams_per_server) do |i|
      SequenceClient.new(server.port, CHANNEL_SETS[i % CHANNEL_SETS.size], query: i % 4 == 3 ? "transport=long-poll" : nil)
    end
  end

  # Each entry: [period in seconds or nil for once, first at, name, action].
  def run_faults(schedule)
    log = Hash.new(0)
    Thread.new do
      start = monotonic
      nexts = schedule.map { |_, first, _| start + first }
      until progress[2]
        now = monotonic
        schedule.each_with_index do |(period, _, name, action), i|
          next if now < nexts[i]

          begin
            log[name] += 1 if action.call
          rescue StandardError => e
            log["#{name} failed: #{e.class}"] += 1
          end
          nexts[i] = period ? monotonic + period : Float::INFINITY
        end
        sleep 0.02
      end
      log
    end
  end

  def server_stats
    @servers.map { |s| s.stats.slice(:gap_repairs, :resets, :redis_reconnects, :errors, :last_error, :joining, :connections) }
  end

  it "delivers every message once and in order while LISTEN connections are killed and the server restarts" do
    @pg = PostgresServer.new.start
    config = { postgres_url: @pg.url, backlog_size: 10_000, connect_timeout: 0.5 }
    @servers = [AppServer.new(config: config).start, AppServer.new(config: config).start]
    swarm = SSESwarm.new(@servers.flat_map { |s| open_streams(s) })
    @servers.each do |s|
      wait_until(message: "streams live") do
        st = s.stats
        st[:connections] == streams_per_server && st[:joining].zero? && st[:redis_connected]
      end
    end
    start_publisher(@pg.url)
    total_s = per_channel * CHANNELS.size / rate
    @faults = run_faults([
      [1.2, 0.8, "terminate LISTEN backends", -> { @pg.terminate_listeners.positive? }],
      [nil, 0.5 * total_s, "restart", -> { @pg.restart }]
    ])
    begin
      swarm.wait_all(timeout: (3 * total_s + 60) * Waiting::SLOW, message: "the publisher") { progress[2] }
    rescue Waiting::Timeout => e
      raise e, "#{e.message}: #{progress.first(2).join(' published, ')} retries"
    end
    faults = @faults.value
    begin
      swarm.wait_all(timeout: 30, message: "every stream complete") { |c| c.complete?(per_channel) }
    rescue Waiting::Timeout
      nil # reported below, stream by stream
    end
    bad = swarm.clients.reject { |c| c.problems.empty? && c.complete?(per_channel) }
    summary = bad.map { |c| "#{c.channels.join('&')} (#{c.resets} resets, at #{c.last}): #{c.problems.first(3).join('; ')}" }
    expect(summary).to eq([]), "#{bad.size} of #{swarm.clients.size} streams wrong:\n#{summary.first(12).join("\n")}\n" \
                               "servers: #{server_stats}"
    expect(swarm.clients.sum(&:resets)).to eq(0), "resets; servers: #{server_stats}"
    expect(faults["restart"]).to eq(1)
    expect(faults["terminate LISTEN backends"]).to be >= 3
    expect(@servers.map { |s| s.stats[:gap_repairs] }).to all(be >= 3)
  ensure
    swarm&.close_all
  end
end
