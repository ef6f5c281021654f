# frozen_string_literal: true

module Spillway
  # Spillway.stats of this process in the Prometheus text format, for a
  # scraper. Mount it behind whatever protects the app's other internals:
  #
  #   mount Spillway::Metrics => "/metrics"              # Rails routes
  #   map("/metrics") { run Spillway::Metrics }          # config.ru
  #
  # Every sample carries a `pid` label: each app-server worker answers for
  # itself (scrape each, or sum by job in the query). Reading the numbers
  # starts nothing: a process that never streamed reports zeros.
  class Metrics
    CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

    # [stats key, metric name, type, help]. Counters end in _total.
    FAMILIES = [
      [:connections, "spillway_connections", :gauge, "Streams open in this process."],
      [:joining, "spillway_joining_streams", :gauge, "Streams waiting for their subscriptions or resume."],
      [:fallback_streams, "spillway_fallback_streams", :gauge, "Open streams served through a Ruby thread (no plain socket to hand over)."],
      [:channels, "spillway_channels", :gauge, "Channels with at least one stream in this process."],
      [:outbox_bytes, "spillway_outbox_bytes", :gauge, "Bytes of frames waiting to be written, each counted once."],
      [:backlog_messages, "spillway_backlog_messages", :gauge, "Messages held in this process's backlogs and resume caches."],
      [:backlog_bytes, "spillway_backlog_bytes", :gauge, "Bytes held in this process's backlogs and resume caches."],
      [:async_pending, "spillway_async_pending", :gauge, "Async publishes waiting for Redis."],
      [:redis_connected, "spillway_redis_connected", :gauge, "1 when both Redis links are up (0 with the memory backend)."],
      [:published, "spillway_published_total", :counter, "Spillway.publish calls in this process."],
      [:messages_in, "spillway_messages_in_total", :counter, "Messages the hub took in for its streams."],
      [:delivered, "spillway_delivered_total", :counter, "Messages written to streams."],
      [:bytes_out, "spillway_sent_bytes_total", :counter, "Bytes written to streams."],
      [:accepted, "spillway_streams_opened_total", :counter, "Streams opened."],
      [:closed, "spillway_streams_closed_total", :counter, "Streams closed, for any reason."],
      [:dropped_slow, "spillway_dropped_slow_total", :counter, "Streams closed for lagging (max_lag, outbox_limit, memory_limit)."],
      [:fallback_total, "spillway_fallback_streams_opened_total", :counter, "Streams opened through a Ruby thread."],
      [:resumes, "spillway_resumes_total", :counter, "Streams that resumed from a Last-Event-ID."],
      [:resets, "spillway_resets_total", :counter, "event: reset frames sent (continuity could not be proven)."],
      [:gap_repairs, "spillway_gap_repairs_total", :counter, "Gap repairs after a Redis link came back."],
      [:redis_reconnects, "spillway_redis_reconnects_total", :counter, "Redis link reconnects."],
      [:redis_messages, "spillway_redis_messages_total", :counter, "Messages received on the Redis subscriber link."],
      [:async_failed, "spillway_async_failed_total", :counter, "Async publishes Redis refused or that were given up."],
      [:errors, "spillway_errors_total", :counter, "Errors the hub recorded (see the log)."],
      [:loop_iterations, "spillway_loop_iterations_total", :counter, "Iterations of the native event loop."]
    ].freeze

    def self.call(env)
      new.call(env)
    end

    def call(env)
      method = env["REQUEST_METHOD"]
      unless method == "GET" || method == "HEAD"
        return [405, { "content-type" => "text/plain", "allow" => "GET, HEAD" }, ["#{method} is not allowed\n"]]
      end

      body = self.class.render(Spillway.stats)
      headers = { "content-type" => CONTENT_TYPE, "cache-control" => "no-store", "content-length" => body.bytesize.to_s }
      [200, headers, method == "HEAD" ? [] : [body]]
    end

    # The exposition text for a stats Hash.
    def self.render(stats)
      pid = %(pid="#{stats[:pid] || Process.pid}")
      out = +""
      out << "# HELP spillway_info Spillway in this process: its version and backend.\n# TYPE spillway_info gauge\n"
      out << %(spillway_info{#{pid},version="#{VERSION}",backend="#{stats[:backend]}"} 1\n)
      FAMILIES.each do |key, name, type, help|
        value = stats[key]
        value = value ? 1 : 0 if key == :redis_connected
        out << "# HELP #{name} #{help}\n# TYPE #{name} #{type}\n#{name}{#{pid}} #{Integer(value || 0)}\n"
      end
      out
    end
  end
end
