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
require "optparse"
require "rbconfig"
require "socket"
require "time"
require "tmpdir"

BENCH = File.expand_path(__dir__)
ROOT = File.expand_path("..", BENCH)
GEMFILE = File.join(BENCH, "Gemfile")
CLK_TCK = Etc.sysconf(Etc::SC_CLK_TCK)
NOFILE = 20_000
IPT_TAG = "spillway-bench-vanish"
VANISH_ADDR = 251
RAMP_PASS = 0.995
FANOUT_PASS = 0.95 # 127.0.0.251 is kept for the vanishing client; loadgens use 2..250

SYSTEMS = %w[ceiling nchan nchan-redis live message_bus spillway spillway-memory].freeze

Options = Struct.new(:quick, :systems, :streams, :messages, :burst, :ramp_steps, :live_threads,
                     :latency_seconds, :rate, :vanish_timeout, :workloads, :output, :install,
                     :size, :keep_tmp, keyword_init: true)

def parse_options(argv)
  o = Options.new(quick: false, systems: SYSTEMS.dup, install: true, rate: 10, burst: 100, size: 0,
                  workloads: %w[ramp throughput burst latency vanish], keep_tmp: false)
  quick = argv.include?("--quick")
  OptionParser.new do |op|
    op.banner = "usage: ruby bench/run.rb [options]"
    op.on("--quick", "smoke mode: small N, a few seconds per workload") { o.quick = true }
    op.on("--systems LIST", "comma list of: #{SYSTEMS.join(',')}") { |v| o.systems = v.split(",") }
    op.on("--workloads LIST", "comma list of: ramp,throughput,burst,latency,vanish") do |v|
      o.workloads = v.split(",")
    end
    op.on("--streams N", Integer, "streams for throughput/latency (default 5000)") { |v| o.streams = v }
    op.on("--messages N", Integer, "messages per throughput run (default 200)") { |v| o.messages = v }
    op.on("--ramp-max N", Integer, "stop the ramp at N streams (default 19000)") { |v| o.ramp_steps = [v] }
    op.on("--live-threads N", Integer, "Puma threads for the live peer (default 5100)") do |v|
      o.live_threads = v
    end
    op.on("--latency-seconds S", Integer, "length of the 10 msg/s latency run (default 30)") do |v|
      o.latency_seconds = v
    end
    op.on("--vanish-timeout S", Integer, "give up waiting for a vanished client after S (default 60)") do |v|
      o.vanish_timeout = v
    end
    op.on("--size BYTES", Integer, "pad each message's data to about BYTES") { |v| o.size = v }
    op.on("--output PATH", "report path (default bench/RESULTS.md, --quick: bench/RESULTS-quick.md)") do |v|
      o.output = v
    end
    op.on("--no-install", "do not apt-get / bundle install") { o.install = false }
    op.on("--keep-tmp", "keep the temporary directory (logs, configs)") { o.keep_tmp = true }
  end.parse!(argv)
  ramp_max = o.ramp_steps&.first || (quick ? 600 : 19_000)
  step = quick ? 200 : 1000
  o.ramp_steps = (step..ramp_max).step(step).to_a
  o.ramp_steps << ramp_max unless o.ramp_steps.last == ramp_max
  o.streams ||= quick ? 300 : 5000
  o.messages ||= quick ? 20 : 200
  o.live_threads ||= quick ? 700 : 5100
  o.latency_seconds ||= quick ? 3 : 30
  o.vanish_timeout ||= quick ? 8 : 60
  o.output ||= File.join(BENCH, quick ? "RESULTS-quick.md" : "RESULTS.md")
  bad = o.systems - SYSTEMS
  abort "unknown system(s): #{bad.join(', ')} (known: #{SYSTEMS.join(', ')})" unless bad.empty?
  o
end

def log(msg)
  $stderr.puts "[bench #{Time.now.strftime('%H:%M:%S')}] #{msg}"
end

require_relative "harness/support"
require_relative "harness/servers"
require_relative "harness/workloads"
require_relative "harness/report"

# ---------- main ----------

def main(argv)
  original = argv.dup
  opts = parse_options(argv)
  tmp = Dir.mktmpdir("spillway-bench-")
  started = Time.now
  ensure_setup(opts, tmp)
  system("iptables", "-S", out: File::NULL, err: File::NULL) or
    (opts.workloads.delete("vanish") && log("iptables unavailable: skipping the vanish workload"))
  log "systems: #{opts.systems.join(', ')}; workloads: #{opts.workloads.join(', ')}; tmp #{tmp}"
  results = opts.systems.map { |name| run_system(name, opts, tmp) }
  finished = Time.now
  md = report(results, opts, started, finished, original)
  File.write(opts.output, md)
  File.write(opts.output.sub(/\.md\z/, ".json"), JSON.pretty_generate(results))
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
