#!/usr/bin/env ruby
# frozen_string_literal: true

# What opening one stream allocates in a real `puma -t 1:1` running the
# bench's Spillway peer (bench/peers/spillway), and what stays allocated:
#
#   1. counts: GC.stat(:total_allocated_objects) over N stream attaches (one
#      new connection each, as the bench opens them), minus what the
#      /debug/gc request that reads it costs; the same for N ordinary
#      requests (GET /ping, a new connection each) to tell Puma's share from
#      Spillway's; heap pages, GC runs and RSS around them; the Ruby objects
#      still live per open stream after a full GC.
#   2. fresh: a new server opens N streams at once (as the memory workload
#      does), another new server answers N ordinary requests (GET /ping, one
#      connection each, as many at once as the streams): RSS, heap pages and
#      GC runs per stream and per request, to tell what opening streams leaves
#      in a fresh process from what any request leaves.
#   3. sites: with BENCH_ALLOC_TRACE=1 the peer turns GC off and traces every
#      allocation of M attaches; the objects are grouped by class and by the
#      file:line that allocated them.
#
#   ruby bench/alloc_attach.rb [--streams N] [--traced M] [--memory] [--spillway-rev REV] [--json PATH]
#
# --memory uses the in-process backend instead of a Redis of its own. Prints
# Markdown; nothing in it is typed by hand.
require_relative "run"

args = { streams: 2000, traced: 200, memory: false, json: nil, rev: nil }
OptionParser.new do |op|
  op.on("--streams N", Integer) { |v| args[:streams] = v }
  op.on("--traced M", Integer) { |v| args[:traced] = v }
  op.on("--memory") { args[:memory] = true }
  op.on("--json PATH") { |v| args[:json] = v }
  op.on("--spillway-rev REV", "ext/ and lib/ of that commit, as bench/run.rb --spillway-rev") { |v| args[:rev] = v }
end.parse!(ARGV)

def get_json(port, path)
  res = Net::HTTP.get_response(URI("http://127.0.0.1:#{port}#{path}"))
  raise "GET #{path}: HTTP #{res.code}" unless res.code == "200"

  JSON.parse(res.body)
end

# n streams on `channel`, opened like the bench's (one connection each, at
# most 256 attempts at once), held until the block returns.
def with_streams(srv, tmp, channel, n)
  lg = loadgen(["-m", "sse", "-H", "-R", "-r", "0", "-k", "256", "-c", n.to_s, srv.sub_url(channel)], tmp, stdin: true)
  ready = lg.wait_event("ready", 120)
  raise "only #{ready['connected']} of #{n} streams connected" unless ready["connected"] == n

  yield
ensure
  lg&.finish(30)
end

# A fresh server: RSS and GC.stat at boot (settled), after `what` (N streams
# held, or N ordinary requests answered), per unit.
def fresh_growth(name, opts, tmp, n, what)
  with_server(name, opts, tmp) do |srv|
    boot_rss = settled_rss_kb(srv.pid)
    g0 = get_json(srv.port, "/debug/gc")
    rss = nil
    g1 = nil
    if what == :streams
      with_streams(srv, tmp, "fresh", n) do
        rss = rss_kb(srv.pid)
        g1 = get_json(srv.port, "/debug/gc")
      end
    else
      # The loadgen takes /ping for a stream that the server ends at once.
      res = loadgen(["-m", "sse", "-r", "0", "-k", "256", "-c", n.to_s, "-t", "120",
                     "http://127.0.0.1:#{srv.port}/ping"], tmp).finish(150)
      raise "only #{res['connected']} of #{n} requests answered" unless res["connected"] == n

      rss = rss_kb(srv.pid)
      g1 = get_json(srv.port, "/debug/gc")
    end
    { n: n, boot_rss_kb: boot_rss, rss_kb: rss, rss_kb_per: (rss - boot_rss).to_f / n,
      heap_pages_added: delta(g0, g1, :heap_allocated_pages), gc_runs: delta(g0, g1, :count),
      heap_kb_per: delta(g0, g1, :heap_allocated_pages) * 64.0 / n }
  end
end

def delta(a, b, key)
  b[key.to_s] - a[key.to_s]
end

ENV["BENCH_ALLOC_TRACE"] = "1"
opts = parse_options(["--quick", "--no-install", *(args[:rev] ? ["--spillway-rev", args[:rev]] : [])])
tmp = Dir.mktmpdir("spillway-alloc-")
ensure_setup(opts, tmp)
name = args[:memory] ? "spillway-memory" : "spillway"
n = args[:streams]
out = { system: name, streams: n }
begin
  with_server(name, opts, tmp) do |srv|
    port = srv.port
    boot = get_json(port, "/debug/gc")
    again = get_json(port, "/debug/gc")
    # What one /debug/gc request itself allocates: subtracted from every delta.
    probe = delta(boot, again, :total_allocated_objects)
    # The first stream starts the hub and loads code paths: not per stream.
    with_streams(srv, tmp, "first", 1) { nil }
    g0 = get_json(port, "/debug/gc?gc=1")
    g1 = nil
    g2 = nil
    with_streams(srv, tmp, "count", n) do
      g1 = get_json(port, "/debug/gc")
      g2 = get_json(port, "/debug/gc?gc=1")
    end
    pings0 = get_json(port, "/debug/gc")
    ping_ok = Array.new(n) { ping_ms(port) }.count { |x| x }
    pings1 = get_json(port, "/debug/gc")
    out[:per_attach] = {
      allocated_objects: (delta(g0, g1, :total_allocated_objects) - probe).to_f / n,
      gc_runs: delta(g0, g1, :count), heap_pages_added: delta(g0, g1, :heap_allocated_pages),
      rss_kb: delta(g0, g1, :rss_kb).to_f / n,
      live_objects_after_full_gc: (delta(g0, g2, :heap_live_slots) - probe).to_f / n,
      rss_kb_after_full_gc: delta(g0, g2, :rss_kb).to_f / n
    }
    out[:per_ping] = { requests: ping_ok, allocated_objects: (delta(pings0, pings1, :total_allocated_objects) - probe).to_f / ping_ok }
    out[:probe_objects] = probe
    out[:gc] = { boot: boot, before: g0, with_streams: g1, with_streams_after_full_gc: g2 }

    m = args[:traced]
    get_json(port, "/debug/alloc/start")
    with_streams(srv, tmp, "traced", m) { nil }
    # The gem's own files by their path in the repository, wherever they were loaded from.
    sites = get_json(port, "/debug/alloc/report").each { |s| s["site"] = s["site"].sub(%r{\A.*/(lib/spillway/)}, '\1') }
    total = sites.sum { |s| s["objects"] }
    out[:traced] = { streams: m, objects: total, per_attach: total.to_f / m,
                     sites: sites.first(40).map { |s| s.merge("per_attach" => s["objects"].to_f / m) } }
    by_class = Hash.new(0)
    by_file = Hash.new(0)
    sites.each do |s|
      by_class[s["class"]] += s["objects"]
      by_file[s["site"].sub(/:\d+\z/, "")] += s["objects"]
    end
    out[:traced][:by_class] = by_class.sort_by { |_, v| -v }.first(15).to_h { |k, v| [k, v.to_f / m] }
    out[:traced][:by_file] = by_file.sort_by { |_, v| -v }.first(15).to_h { |k, v| [k, v.to_f / m] }
  end
  out[:fresh] = { streams: fresh_growth(name, opts, tmp, n, :streams), pings: fresh_growth(name, opts, tmp, n, :pings) }
ensure
  FileUtils.rm_rf(tmp)
end

File.write(args[:json], JSON.pretty_generate(out)) if args[:json]
pa = out[:per_attach]
t = out[:traced]
puts "# What one stream attach allocates (#{name}, puma -t 1:1)\n\n"
puts "- load average: #{File.read('/proc/loadavg').split[0, 3].join(' ')}; #{RUBY_DESCRIPTION}; " \
     "spillway: #{args[:rev] ? "--spillway-rev #{args[:rev]}" : 'the working tree'}"
puts format("- per attach, over %d streams: %.1f objects allocated (a GET /ping on a new connection: %.1f); " \
            "%d GC runs; %d heap pages added; RSS +%.2f KiB per stream, +%.2f KiB after a full GC; " \
            "%.2f Ruby objects per stream still live after a full GC",
            n, pa[:allocated_objects], out[:per_ping][:allocated_objects], pa[:gc_runs], pa[:heap_pages_added],
            pa[:rss_kb], pa[:rss_kb_after_full_gc], pa[:live_objects_after_full_gc])
fr = out[:fresh]
%i[streams pings].each do |k|
  f = fr[k]
  puts format("- fresh process, %d %s at once: RSS %d -> %d KiB, +%.2f KiB per %s; Ruby heap +%d pages of 64 KiB " \
              "(%.2f KiB per %s); %d GC runs",
              f[:n], k == :streams ? "streams" : "ordinary requests (GET /ping)", f[:boot_rss_kb], f[:rss_kb],
              f[:rss_kb_per], k == :streams ? "stream" : "request", f[:heap_pages_added], f[:heap_kb_per],
              k == :streams ? "stream" : "request", f[:gc_runs])
end
puts format("- traced (GC off, %d attaches): %.1f objects per attach\n\n", t[:streams], t[:per_attach])
puts "| objects per attach | bytes per attach | class | allocated at |\n|---:|---:|---|---|"
t[:sites].first(30).each do |s|
  puts format("| %.2f | %.0f | %s | `%s` |", s["per_attach"], s["bytes"].to_f / t[:streams], s["class"], s["site"])
end
puts "\nBy file: #{t[:by_file].map { |k, v| format('`%s` %.1f', k, v) }.join(', ')}"
puts "\nBy class: #{t[:by_class].map { |k, v| format('%s %.1f', k, v) }.join(', ')}"
