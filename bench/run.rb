#!/usr/bin/env ruby
# frozen_string_literal: true

# Side-by-side benchmark: one command runs the same workloads against several
# SSE/pub-sub servers on this machine and reports the numbers and the ratios
# spillway / each peer.
#
#   ruby bench/run.rb --quick                 # smoke: small N, seconds per system
#   ruby bench/run.rb                         # full run, writes bench/RESULTS.md
#   ruby bench/run.rb --systems ceiling,nchan # a subset
#   ruby bench/run.rb --help
#
# The parts: harness/support.rb (processes, tools, setup), harness/servers.rb
# (the systems), harness/workloads.rb, harness/report.rb (RESULTS.md).
#
# Every workload runs against a fresh server process (and a fresh Redis where
# the system uses one): a Live-style server never notices that a client left,
# so reusing it would carry the previous run's threads into the next.
# Nothing waits on fixed sleeps: every wait is a condition with a deadline.
require "erb"
require "etc"
require "fileutils"
require "json"
require "net/http"
require "optparse"
require "rbconfig"
require "socket"
require "time"
require "tmpdir"

# Started under `bundle exec` (as `bundle exec rake bench` does): the top-level
# bundle's environment (RUBYOPT=-rbundler/setup, BUNDLE_GEMFILE) must not reach
# the bench's own `bundle install` or the servers it starts, which use
# bench/Gemfile; on a fresh clone it would make the install fail.
ENV.replace(Bundler.unbundled_env) if defined?(Bundler) && Bundler.respond_to?(:unbundled_env)

BENCH = File.expand_path(__dir__)
ROOT = File.expand_path("..", BENCH)
GEMFILE = File.join(BENCH, "Gemfile")
CLK_TCK = Etc.sysconf(Etc::SC_CLK_TCK)
NOFILE = 20_000
IPT_TAG = "spillway-bench-vanish"
# Client addresses kept apart from the loadgens' 127.0.0.2..250: the silently
# vanishing client and the one whose FIN/RST the server should notice.
VANISH_ADDR = 251
FIN_ADDR = 252
RAMP_PASS = 0.995
FANOUT_PASS = 0.95
# Puma threads the live peer gets beyond the streams it is asked to hold.
# Puma 6.6's ThreadPool counts a thread that was spawned but has not run yet
# twice (its @todo item and @spawned); when that pushes its busy count to the
# maximum, the acceptor waits on @not_full, and only a thread going idle
# signals it. Live threads never go idle, so the acceptor then sleeps for good
# and every later connection stays in the listen queue (this was the live
# peer's "0.5-4% of stream requests unanswered"; bench/README.md). The
# phantom count is at most the requests being handed over at once, which the
# loadgen bounds with -k 256.
LIVE_HEADROOM = 512
# Lockstep runs: at least this many batches even past --lockstep-seconds.
LOCKSTEP_MIN_ROUNDS = 20
LOCKSTEP_MIN_BURSTS = 3

SYSTEMS = %w[ceiling nchan nchan-redis live message_bus message_bus-lp spillway spillway-lp spillway-memory
             spillway-pg].freeze
# profile runs only for the Spillway systems, and only where perf works.
WORKLOADS = %w[ramp memory throughput burst openloop latency roundtrip storm fin vanish profile].freeze
# The long-poll systems (the same servers, clients that poll): what a held
# poll costs and how fast polls deliver. A poll's release on FIN or silence
# is a stream's (the same socket in the same loop), the storm is a stream's
# resume, and the profile is of the streaming path.
LONG_POLL_WORKLOADS = %w[ramp memory throughput burst openloop latency].freeze

Options = Struct.new(:quick, :systems, :streams, :messages, :burst, :ramp_steps, :live_threads,
                     :latency_seconds, :rate, :vanish_timeout, :workloads, :output, :install,
                     :size, :keep_tmp, :lockstep_messages, :burst_messages, :lockstep_seconds,
                     :fin_timeout, :skipped, :spillway_rev, :spillway_built, :rounds, :storm_streams,
                     :storm_messages, :storm_workers, :fresh_sizes, keyword_init: true)

def parse_options(argv)
  o = Options.new(quick: false, systems: SYSTEMS.dup, install: true, rate: 10, burst: 100, size: 0,
                  workloads: nil, keep_tmp: false, skipped: [])
  quick = argv.include?("--quick")
  OptionParser.new do |op|
    op.banner = "usage: ruby bench/run.rb [options]"
    op.on("--quick", "smoke mode: small N, a few seconds per workload") { o.quick = true }
    op.on("--systems LIST", "comma list of: #{SYSTEMS.join(',')}") { |v| o.systems = v.split(",") }
    op.on("--workloads LIST", "comma list of: #{WORKLOADS.join(',')} (default: all; --quick: all but profile)") do |v|
      o.workloads = v.split(",")
    end
    op.on("--streams N", Integer, "streams for throughput/latency (default 5000)") { |v| o.streams = v }
    op.on("--messages N", Integer, "messages of the open-loop run (default 200, repeated bigger if short)") do |v|
      o.messages = v
    end
    op.on("--lockstep-messages N", Integer, "most messages of the one-at-a-time lockstep run (default 2000)") do |v|
      o.lockstep_messages = v
    end
    op.on("--burst-messages N", Integer, "most messages of the bursts-of-100 lockstep run (default 5000)") do |v|
      o.burst_messages = v
    end
    op.on("--lockstep-seconds S", Float, "start no new lockstep batch after S seconds (default 10)") do |v|
      o.lockstep_seconds = v
    end
    op.on("--rounds N", Integer, "one-at-a-time lockstep runs per system, interleaved across the systems; " \
                                 "the median is reported (default 3, --quick: 1)") { |v| o.rounds = v }
    op.on("--ramp-max N", Integer, "stop the ramp at N streams (default 19000)") { |v| o.ramp_steps = [v] }
    op.on("--live-threads N", Integer, "Puma threads for the live peer (default 5512; " \
                                       "it holds #{LIVE_HEADROOM} streams fewer)") do |v|
      o.live_threads = v
    end
    op.on("--latency-seconds S", Integer, "length of the 10 msg/s latency run (default 30)") do |v|
      o.latency_seconds = v
    end
    op.on("--vanish-timeout S", Integer, "give up waiting for a vanished client after S (default 60)") do |v|
      o.vanish_timeout = v
    end
    op.on("--fin-timeout S", Integer, "give up waiting for the release after a FIN/RST after S (default 10)") do |v|
      o.fin_timeout = v
    end
    op.on("--storm-streams N", Integer, "streams of the reconnect storm (default 5000, --quick: 500)") do |v|
      o.storm_streams = v
    end
    op.on("--storm-messages K", Integer, "messages every storm stream has missed (default 20)") do |v|
      o.storm_messages = v
    end
    op.on("--storm-workers W", Integer, "also run Spillway's storm on Puma with W workers " \
                                        "(default: one per core; 1: not)") do |v|
      o.storm_workers = v
    end
    op.on("--fresh-sizes LIST", "streams opened in a fresh process for the memory workload " \
                                "(default: the delivery runs' streams and the ramp's top)") do |v|
      o.fresh_sizes = v.split(",").map { |x| Integer(x) }
    end
    op.on("--size BYTES", Integer, "pad each message's data to about BYTES") { |v| o.size = v }
    op.on("--output PATH", "report path (default bench/RESULTS.md, --quick: bench/RESULTS-quick.md)") do |v|
      o.output = v
    end
    op.on("--spillway-rev REV", "measure Spillway as committed at REV (built into the tmp dir), " \
                                "not the working tree's lib/") { |v| o.spillway_rev = v }
    op.on("--no-install", "do not apt-get / bundle install") { o.install = false }
    op.on("--keep-tmp", "keep the temporary directory (logs, configs)") { o.keep_tmp = true }
  end.parse!(argv)
  ramp_max = o.ramp_steps&.first || (quick ? 600 : 19_000)
  step = quick ? 200 : 1000
  o.ramp_steps = (step..ramp_max).step(step).to_a
  o.ramp_steps << ramp_max unless o.ramp_steps.last == ramp_max
  o.streams ||= quick ? 300 : 5000
  o.messages ||= quick ? 20 : 200
  o.lockstep_messages ||= quick ? 100 : 2000
  o.burst_messages ||= quick ? 500 : 5000
  o.lockstep_seconds ||= quick ? 2 : 10
  o.rounds ||= quick ? 1 : 3
  o.storm_streams ||= quick ? 500 : 5000
  o.storm_messages ||= 20
  o.storm_workers ||= Etc.nprocessors
  abort "--storm-streams must be 1..19900 (one loadgen)" unless (1..19_900).cover?(o.storm_streams)
  o.fresh_sizes ||= [o.streams, ramp_max].uniq
  abort "--rounds must be at least 1" if o.rounds < 1
  o.fin_timeout ||= quick ? 5 : 10
  o.workloads ||= quick ? WORKLOADS - %w[profile] : WORKLOADS.dup
  o.live_threads ||= (quick ? 600 : 5000) + LIVE_HEADROOM
  o.latency_seconds ||= quick ? 3 : 30
  o.vanish_timeout ||= quick ? 8 : 60
  o.output ||= File.join(BENCH, quick ? "RESULTS-quick.md" : "RESULTS.md")
  bad = o.systems - SYSTEMS
  abort "unknown system(s): #{bad.join(', ')} (known: #{SYSTEMS.join(', ')})" unless bad.empty?
  bad = o.workloads - WORKLOADS
  abort "unknown workload(s): #{bad.join(', ')} (known: #{WORKLOADS.join(', ')})" unless bad.empty?
  o
end

def log(msg)
  $stderr.puts "[bench #{Time.now.strftime('%H:%M:%S')}] #{msg}"
end

require_relative "harness/support"
require_relative "harness/servers"
require_relative "harness/workloads"
require_relative "harness/storm"
require_relative "harness/profile"
require_relative "harness/report"
require_relative "harness/targets"
require_relative "harness/profile_report"

# ---------- main ----------

def main(argv)
  original = argv.dup
  opts = parse_options(argv)
  tmp = Dir.mktmpdir("spillway-bench-")
  started = Time.now
  ensure_setup(opts, tmp)
  # Workloads that need what this machine may not give are skipped out loud:
  # in the log and in the report's header.
  if opts.workloads.include?("vanish") && !system("iptables", "-S", out: File::NULL, err: File::NULL)
    opts.workloads.delete("vanish")
    opts.skipped << "vanish (iptables unavailable: it needs root)"
  end
  if opts.workloads.include?("profile") && !perf_usable?
    opts.workloads.delete("profile")
    opts.skipped << "profile (perf record failed)"
  end
  if opts.systems.include?("spillway-pg") && !(Postgres.available? && spillway_has_libpq?(opts, tmp))
    opts.systems.delete("spillway-pg")
    opts.skipped << "spillway-pg (no PostgreSQL server in #{Postgres::BIN}, or Spillway built without libpq)"
  end
  opts.skipped.each { |s| log "SKIPPED: #{s}" }
  log "systems: #{opts.systems.join(', ')}; workloads: #{opts.workloads.join(', ')}; tmp #{tmp}"
  results = opts.systems.map { |name| run_system(name, opts, tmp) }
  lockstep_rounds(results, opts, tmp)
  finished = Time.now
  # The raw results first: a report that fails must not lose a long run.
  File.write(opts.output.sub(/\.md\z/, ".json"), JSON.pretty_generate(results))
  md = report(results, opts, started, finished, original)
  File.write(opts.output, md)
  puts md
  log "wrote #{opts.output}"
ensure
  if tmp && !opts&.keep_tmp
    FileUtils.rm_rf(tmp)
  elsif tmp
    log "kept #{tmp}"
  end
end

main(ARGV) if $PROGRAM_NAME == __FILE__
