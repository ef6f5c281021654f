# frozen_string_literal: true

require "spec_helper"

# Spillway issue 8: connect/disconnect churn leaves the server flat. A real
# Puma, real TCP, ChurnDriver's mix of streams (spec/support/churn_driver.rb:
# closed after the head, after live messages, in the middle of a resume
# replay, on several channels, by FIN, by RST, half-closed), 200 in flight
# at once, a publisher meanwhile. After a warm-up the Puma process's
# descriptors and resident memory are taken; after the run the descriptors
# must be back, RSS nearly, and the hub must hold no stream.
#
# Sizes: CHURN_FULL=1 runs 100,000 cycles per backend after the warm-up
# (CHURN_CYCLES and CHURN_WARMUP set them freely); by default (CI) 10,000,
# which still fails on a leak per connection:
# - of a descriptor: 10,000 left open instead of none (the check is exact);
# - of memory, against 4 MiB over the second half of the run (5,000 cycles)
#   and 16 MiB over all of it: a leak of L bytes in every cycle grows RSS by
#   at least 5,000 * (L + 16) bytes over the second half (16: malloc's
#   smallest overhead), past 4 MiB from L = 823 bytes; a leak in one kind of
#   cycle only (a ninth of them) from 7.5 KB. Full mode: from 68 bytes in
#   every cycle.
# Why judge the second half: past the warm-up nothing of the server should
# grow, but RSS moves anyway: malloc arenas fill their holes up to a
# plateau, Ruby keeps freed heap pages, and with Redis the resume answers in
# flight come and go (400 KB each). Measured after a 3,000-cycle warm-up (the
# examples print the numbers): usually +0.7 to +2 MiB over 10,000 cycles,
# but one run in about ten climbed +8.2 MiB in its first 5,000 cycles and
# then stayed flat (+128 KiB over the second half): a plateau, not a leak,
# which a single bound from the warm-up would call one. A leak grows all the
# way.
#
# Under valgrind (rake spec:valgrind) the run is shorter and RSS is not
# judged: memcheck keeps freed blocks aside (20 MB by default) and its own
# bookkeeping grows with every allocation. Descriptors and counters are.
RSpec.describe "Churn: connect/disconnect cycles" do
  full = ENV["CHURN_FULL"] == "1"
  valgrind = !ENV["SPILLWAY_VALGRIND"].nil?
  cycles = Integer(ENV.fetch("CHURN_CYCLES", full ? 100_000 : (valgrind ? 1_000 : 10_000)))
  warmup = Integer(ENV.fetch("CHURN_WARMUP", valgrind ? 300 : 3_000))
  rss_bound_kib = 8 * 1024
  live = %w[churn:live:0 churn:live:1 churn:live:2 churn:live:3].freeze
  replay_channel = "churn:replay"
  # The backlog a replay client resumes into: 100 messages of 4 KB after its
  # cursor's message (400 KB; its small receive window holds about 8 KB, so
  # the hub is still writing when it closes). Fewer, larger messages than
  # "a few hundred of 2 KB": Redis spends about 30 us per entry of the
  # resume script (measured: 200 x 2 KB 6 ms, 100 x 4 KB 3.5 ms, 50 x 8 KB
  # 2 ms per resume on this box), and two cycles in nine are replays.
  replay_count = 100
  replay_size = 4096
  # Replay streams open at once: 200. Redis runs the reads a hub pipelines
  # one after the other and writes no answer before the batch is done; when
  # every resume was a read of its own (before the resume cache), 100-200 of
  # them at 3-10 ms outlasted command_timeout (1 s): the hub dropped the
  # link, sent every read again, and the streams waited for ever. Now the
  # streams resuming the channel share one paged read and the ring after it
  # (CHURN_REPLAYS=200 CHURN_PLAN=replay: 0 reconnects, 0 errors).
  replays_in_flight = Integer(ENV.fetch("CHURN_REPLAYS", 200))
  # The kinds of cycle in turn (ChurnDriver::PLAN), e.g. CHURN_PLAN=replay,half.
  plan = ENV["CHURN_PLAN"] ? ENV["CHURN_PLAN"].split(",").map(&:to_sym) : ChurnDriver::PLAN
  # Two malloc arenas, as Ruby servers are usually run (MALLOC_ARENA_MAX=2):
  # with glibc's default of 8 per core, each Puma thread and the reactor
  # fragment their own arena, and RSS creeps up to its plateau over some
  # 30,000 cycles (+4.4 MiB measured) instead of 8,000 (+1.6 MiB). A leak
  # grows RSS the same in either.
  puma_env = { "MALLOC_ARENA_MAX" => "2" }

  def fd_settled(pid)
    last = nil
    wait_until(timeout: 20, interval: 0.2, message: "Puma's descriptors to settle") do
      n = ProcessProbe.fd_count(pid)
      stable = n == last
      last = n
      stable && n
    end
  end

  def streams_gone?(st)
    st[:connections].zero? && st[:joining].zero?
  end

  # Polls the block until `ok` holds for its value or `timeout` passes; the
  # last value either way, for the expectations to judge (and all of them
  # to report).
  def poll(timeout, ok, interval: 0.05)
    last = nil
    wait_until(timeout: timeout, interval: interval) { ok.call(last = yield) }
    last
  rescue Waiting::Timeout
    last
  end

  def report(label, lines)
    $stdout.puts "\n  churn (#{label}):"
    lines.each { |l| $stdout.puts "    #{l}" }
  end

  shared_examples "churn" do |backend|
    it "leaves Puma's descriptors and RSS flat and the hub with no stream" do
      pid = server.pid
      expect(server.get("/pid").body.to_i).to eq(pid) # the process measured is the one serving
      # The live channels' backlogs fill up now (the memory backend keeps
      # 1000 messages each), not during the measured run.
      live.each { |ch| server.post("/publish_seq?channel=#{ch}&count=1000&size=64") }
      ids = JSON.parse(server.post("/publish_seq?channel=#{replay_channel}&count=#{replay_count + 1}" \
                                   "&size=#{replay_size}").body)
      replay = { channel: replay_channel, cursor: ids.first, first: 2, count: replay_count }
      driver = ChurnDriver.new(port: server.port, live: live, replay: replay, concurrency: 200,
                               replays: replays_in_flight, plan: plan)
      publisher = ChurnPublisher.new(server.port, live)

      t0 = monotonic
      publisher.start
      driver.run(warmup)
      publisher.stop
      wait_until(timeout: 30, interval: 0.05, message: "every warm-up stream released") { streams_gone?(server.stats) }
      fd_base = fd_settled(pid)
      kinds_base = ProcessProbe.fd_kinds(pid, server.port)
      rss_base = ProcessProbe.rss_kib(pid)
      t1 = monotonic

      samples = []
      publisher.start
      driver.run(cycles, every: [cycles / 10, 1].max) { |n| samples << [n, ProcessProbe.rss_kib(pid)] }
      publisher.stop
      t2 = monotonic

      # Closes are processed asynchronously (and Redis channels linger for
      # unsubscribe_linger): each wait has a deadline, then the numbers go
      # to the expectations. The descriptors are counted after the last
      # /stats request, and Puma may take a moment to close its side of it.
      channels_left = backend == :redis ? 0 : live.size + 1 # the memory backend keeps the backlogs
      st = poll(30, ->(s) { streams_gone?(s) && s[:channels] <= channels_left }, interval: 0.1) { server.stats }
      fd_end = poll(30, ->(n) { n <= fd_base }) { ProcessProbe.fd_count(pid) }
      kinds_end = poll(10, ->(k) { k.keys.grep(/client conn/).empty? }) { ProcessProbe.fd_kinds(pid, server.port) }
      rss_end = ProcessProbe.rss_kib(pid)

      report(backend, [
               "#{cycles} cycles after a #{warmup}-cycle warm-up; #{(t2 - t1).round(1)} s " \
               "(#{(cycles / (t2 - t1)).round} cycles/s), #{(monotonic - t0).round(1)} s in all",
               "kinds: #{driver.counts.sort.map { |k, v| "#{k} #{v}" }.join(', ')}",
               "replays closed mid-replay #{driver.mid_replay}, before the first replayed event " \
               "#{driver.replay_before_first}; half-closed streams closed by the server #{driver.half_closed_by_server}",
               "published meanwhile #{publisher.published}",
               "fds: #{fd_base} after the warm-up #{kinds_base.sort.to_h}, #{fd_end} at the end",
               "RSS: #{rss_base} KiB after the warm-up, #{rss_end} KiB at the end " \
               "(#{rss_end - rss_base >= 0 ? '+' : ''}#{rss_end - rss_base} KiB); during: " +
                 samples.map { |n, kib| "#{n}: #{kib}" }.join(", "),
               "hub: " + st.slice(:accepted, :closed, :connections, :joining, :channels, :resumes, :resets,
                                  :dropped_slow, :errors, :last_error, :delivered, :redis_reconnects).map { |k, v| "#{k} #{v}" }.join(", ")
             ])

      aggregate_failures do
        expect(driver.failures).to be_empty, -> { "#{driver.failures.size} cycles failed, e.g.\n#{driver.failures.first(10).join("\n")}" }
        expect(driver.counts.keys - [:failed]).to match_array(plan.uniq)
        # Most replays with a target above zero were cut while the hub was
        # still writing; those told to close at once may be cut before the
        # first event arrived (the resume still in Redis).
        replays = driver.counts[:replay]
        expect(driver.mid_replay).to be >= replays / 2
        expect(driver.half_closed_by_server).to eq(driver.counts[:half])
        expect(publisher.errors).to be_empty
        expect(publisher.published).to be_positive

        expect(st[:connections]).to eq(0)
        expect(st[:joining]).to eq(0)
        expect(st[:closed]).to eq(st[:accepted])
        # Every cycle reached the hub.
        expect(st[:accepted]).to eq(warmup + cycles)
        expect(st[:channels]).to be <= channels_left
        expect(st[:dropped_slow]).to eq(0)
        expect(st[:errors]).to eq(0), -> { "hub errors: #{st[:last_error]}" }
        expect(st[:redis_reconnects]).to eq(0) if backend == :redis

        expect(kinds_base.keys.grep(/client conn/)).to be_empty, -> { "after the warm-up Puma holds #{kinds_base}" }
        expect(kinds_end.keys.grep(/client conn/)).to be_empty, -> { "Puma still holds #{kinds_end}" }
        expect(fd_end).to be <= fd_base
        unless valgrind
          # Flat: no growth over the second half of the run (a leak grows all
          # the way; malloc's arenas reach their high-water mark early and
          # stay), and a bounded rise overall.
          # A step of the allocator inside the second half (seen twice in CI:
          # 4.2 MiB, then flat) is not a leak; growth that goes on into the
          # last quarter is. A leak of ~800 bytes a cycle fails both.
          at = ->(frac) { samples.min_by { |n, _| (n - cycles * frac).abs }&.last || rss_base }
          rss_mid = at.(0.5)
          rss_q3 = at.(0.75)
          half_ok = rss_end - rss_mid < rss_bound_kib / 2
          expect(half_ok || rss_end - rss_q3 < rss_bound_kib / 8).to be(true),
                                       -> { "RSS grew #{rss_end - rss_mid} KiB over the second half (bound #{rss_bound_kib / 2}) " \
                                            "and #{rss_end - rss_q3} KiB over the last quarter (bound #{rss_bound_kib / 8}): " \
                                            "#{samples.map(&:last).join(', ')}" }
          expect(rss_end - rss_base).to be < 2 * rss_bound_kib,
                                        -> { "RSS grew #{rss_end - rss_base} KiB over #{cycles} cycles (bound #{2 * rss_bound_kib})" }
        end
      end
    ensure
      publisher&.stop
    end
  end

  describe "with the memory backend" do
    before(:all) do
      @server = AppServer.new(config: { heartbeat: 15 }, threads: "4:4", env: puma_env).start
    end

    after(:all) { @server&.stop }

    let(:server) { @server }

    include_examples "churn", :memory
  end

  describe "with the Redis backend" do
    before(:all) do
      @redis = RedisServer.new.start
      @server = AppServer.new(config: { redis_url: @redis.url, heartbeat: 15 }, threads: "4:4", env: puma_env).start
    end

    after(:all) do
      @server&.stop
      @redis&.cleanup
    end

    let(:server) { @server }

    include_examples "churn", :redis
  end
end
