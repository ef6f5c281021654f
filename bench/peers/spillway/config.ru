# The Spillway target, through the gem's public API only.
#
#   GET  /stream?channel=C         Spillway::Middleware: SSE from the native hub
#   POST /pub?channel=C&count=K[&seq=S]
#                                  Spillway.publish K times; the data of each is
#                                  "<seq> <t_ns> <body>" (seqs from S, else this
#                                  process's count), stamped right before its
#                                  publish call
#   POST /pubtime?channel=C&count=N
#                                  N Spillway.publish calls one after the other,
#                                  each timed: the publish round trip (to Redis
#                                  or PostgreSQL and back; the memory backend's
#                                  in-process cost) as JSON percentiles in µs
#   GET  /cursor                   Spillway.cursor: where a long-poll client
#                                  that has seen nothing yet starts
#   GET  /stats                    Spillway.stats as JSON
#   GET  /ping                     an ordinary request ("pong"), timed by the
#                                  harness while the streams are held
#   GET  /debug/gc[?gc=1]          GC.stat counters and VmRSS (after a full GC
#                                  with gc=1): allocations per attach are the
#                                  delta over N streams (bench/alloc_attach.rb)
#   GET  /debug/alloc/start, /debug/alloc/report
#                                  only with BENCH_ALLOC_TRACE=1: GC off and
#                                  every allocation traced from start to report,
#                                  which groups the objects by class and site
#
# Run: [REDIS_URL=redis://127.0.0.1:PORT | POSTGRES_URL=postgres://...] puma -t 1:1 -b tcp://127.0.0.1:PORT
# Without either Spillway uses its in-process memory backend.
require "json"
require_relative "../timing"
require "objspace" if ENV["BENCH_ALLOC_TRACE"] == "1" # only the tracing endpoints need it
require "spillway"

# postgres_url only when asked: an A/B run (--spillway-rev) may load a
# Spillway from before the PostgreSQL backend, which knows no such key.
Spillway.configure(redis_url: ENV["REDIS_URL"], **(ENV["POSTGRES_URL"] ? { postgres_url: ENV["POSTGRES_URL"] } : {}))

SEQ = Hash.new(0)
SEQ_LOCK = Mutex.new

GC_KEYS = %i[count minor_gc_count major_gc_count total_allocated_objects total_freed_objects heap_live_slots
             heap_allocated_pages heap_eden_pages malloc_increase_bytes oldmalloc_increase_bytes].freeze

def debug_gc(full)
  GC.start(full_mark: true, immediate_sweep: true) if full
  stat = GC.stat
  h = GC_KEYS.to_h { |k| [k, stat[k]] }
  h[:rss_kb] = File.read("/proc/self/status")[/^VmRSS:\s+(\d+)/, 1].to_i
  h
end

# Every object allocated between start and report stays (GC is off), with
# the file and line that allocated it; report counts them by class and site.
def debug_alloc_report
  ObjectSpace.trace_object_allocations_stop
  sites = Hash.new { |h, k| h[k] = [0, 0] }
  ObjectSpace.each_object do |o|
    file = ObjectSpace.allocation_sourcefile(o) or next
    site = sites[[o.class.to_s, "#{file.sub(%r{\A.*/gems/}, '')}:#{ObjectSpace.allocation_sourceline(o)}"]]
    site[0] += 1
    site[1] += ObjectSpace.memsize_of(o)
  end
  ObjectSpace.trace_object_allocations_clear
  GC.enable
  sites.sort_by { |_, (n, _)| -n }.map { |(cls, at), (n, bytes)| { class: cls, site: at, objects: n, bytes: bytes } }
end

use Spillway::Middleware

run lambda { |env|
  req = Rack::Request.new(env)
  case req.path_info
  when "/pub"
    channel = req.params["channel"] or return [400, {}, ["channel?\n"]]
    count = (req.params["count"] || 1).to_i
    pad = req.body.read
    pad = " #{pad}" unless pad.empty?
    # The publisher's numbering when it sends one (several worker
    # processes would each count from 1), else this process's.
    first = req.params["seq"]&.to_i
    last = nil
    SEQ_LOCK.synchronize do
      count.times do |i|
        seq = first ? first + i : (SEQ[channel] += 1)
        last = Spillway.publish(channel,
                                "#{seq} #{Process.clock_gettime(Process::CLOCK_REALTIME, :nanosecond)}#{pad}")
      end
    end
    body = "#{last}\n"
    [200, { "content-type" => "text/plain", "content-length" => body.bytesize.to_s }, [body]]
  when "/pubtime"
    channel = req.params["channel"] or return [400, {}, ["channel?\n"]]
    n = (req.params["count"] || 1000).to_i.clamp(1, 100_000)
    body = JSON.generate(time_calls(n) { |i| Spillway.publish(channel, "#{i + 1} 0") })
    [200, { "content-type" => "application/json", "content-length" => body.bytesize.to_s }, [body]]
  when "/cursor"
    body = "#{Spillway.cursor}\n"
    [200, { "content-type" => "text/plain", "content-length" => body.bytesize.to_s }, [body]]
  when "/ping"
    [200, { "content-type" => "text/plain", "content-length" => "5" }, ["pong\n"]]
  when "/debug/gc"
    body = JSON.generate(debug_gc(req.params["gc"] == "1"))
    [200, { "content-type" => "application/json", "content-length" => body.bytesize.to_s }, [body]]
  when "/debug/alloc/start", "/debug/alloc/report"
    return [404, { "content-length" => "0" }, []] unless ENV["BENCH_ALLOC_TRACE"] == "1"

    if req.path_info.end_with?("start")
      GC.start
      GC.disable
      ObjectSpace.trace_object_allocations_start
      body = JSON.generate(started: true)
    else
      body = JSON.generate(debug_alloc_report)
    end
    [200, { "content-type" => "application/json", "content-length" => body.bytesize.to_s }, [body]]
  when "/stats"
    body = JSON.generate(Spillway.stats)
    [200, { "content-type" => "application/json", "content-length" => body.bytesize.to_s }, [body]]
  else
    [404, { "content-length" => "0" }, []]
  end
}
