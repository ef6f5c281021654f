# frozen_string_literal: true

require "openssl"
require "json"
require "securerandom"

module Spillway
  # A live dashboard for operators. Mount it behind the app's own auth:
  #
  #   authenticate :user, ->(u) { u.admin? } do
  #     mount Spillway::Dashboard.new => "/spillway"      # Rails routes
  #   end
  #
  # The page shows, per process and summed: open streams, channels,
  # deliveries and publishes per second as small live charts, the Redis
  # links, the busiest channels (each process's BUSIEST, merged by name),
  # and the latest errors and resets from the log. It is updated over
  # Spillway's own stream: while the page is open (it pings every
  # KEEPALIVE_S), each process it reached publishes a snapshot of its numbers
  # every INTERVAL_S on a channel named after the secret (so no other stream
  # can guess it), and every process's snapshot reaches the page (Redis).
  class Dashboard
    INTERVAL_S = 1.0
    BUSIEST = 20 # channels per process in a snapshot
    KEEPALIVE_S = 20
    IDLE_S = 120 # a process stops publishing this long after the last ping

    def initialize
      @stream = Middleware.new(nil, mount: "/stream", authorize: ->(_env, channels) { channels == [self.class.channel] })
    end

    def call(env)
      case [env["REQUEST_METHOD"], env["PATH_INFO"].to_s.chomp("/")]
      when ["GET", ""] then page(env)
      when ["GET", "/stream"]
        self.class.awake!
        @stream.call(env)
      when ["POST", "/ping"]
        self.class.awake!
        [204, { "cache-control" => "no-store" }, []]
      else [404, { "content-type" => "text/plain" }, ["not found\n"]]
      end
    end

    class << self
      # The channel the snapshots go out on: derived from the secret when
      # there is one (every process agrees on it), else this process's own.
      def channel
        secret = Spillway.config.secret
        @channel = nil if @channel_for != secret
        @channel_for = secret
        @channel ||= "spillway-dashboard:" +
                     (secret ? OpenSSL::HMAC.hexdigest("SHA256", secret, "spillway dashboard")[0, 32] : SecureRandom.hex(16))
      end

      # Starts (or keeps alive) this process's snapshot thread.
      def awake!
        @lock.synchronize do
          @last_ping = now
          return if @thread&.alive? && @thread_pid == Process.pid

          @thread_pid = Process.pid
          @thread = Thread.new { publish_loop }
          @thread.name = "spillway-dashboard"
        end
      end

      # One process's numbers, as the page gets them.
      def snapshot(stats = Spillway.stats)
        keys = %i[backend pid connections joining channels published delivered dropped_slow resets resumes
                  redis_connected redis_reconnects gap_repairs errors last_error fallback_streams outbox_bytes
                  backlog_messages async_pending]
        busiest = Spillway.busiest_channels(BUSIEST + 1).reject { |c| c[:name] == channel && !c[:site_id] }.first(BUSIEST)
        { t: Time.now.to_f, stats: stats.slice(*keys), log: Spillway.recent_log.last(10),
          channels: busiest.map { |c| shown(c).slice(:name, :subscribers, :messages_per_s, :deliveries_per_s) } }
      end

      private

      # Two sites' channels of one name are two rows (multisite).
      def shown(c)
        c[:site_id] ? c.merge(name: "#{c[:name]} (site #{c[:site_id]})") : c
      end

      def now
        Process.clock_gettime(Process::CLOCK_MONOTONIC)
      end

      def publish_loop
        loop do
          break if now - @last_ping > IDLE_S

          begin
            # No site: the dashboard's own stream has none (multisite).
            Spillway.publish(channel, JSON.generate(snapshot), event: "snapshot", site_id: nil)
          rescue StandardError => e
            Spillway.logger.warn("Spillway: dashboard snapshot not published: #{e.class}: #{e.message}")
          end
          sleep INTERVAL_S
        end
      end
    end
    @lock = Mutex.new
    @last_ping = 0

    private

    def page(env)
      base = env["SCRIPT_NAME"].to_s
      html = PAGE.sub("%BASE%", JSON.generate(base)).sub("%CHANNEL%", JSON.generate(self.class.channel))
      [200, { "content-type" => "text/html; charset=utf-8", "cache-control" => "no-store",
              "content-security-policy" => "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'" },
       [html]]
    end

    PAGE = <<~'HTML'.sub("%KEEPALIVE%", KEEPALIVE_S.to_s).freeze
      <!DOCTYPE html>
      <html><head><meta charset="utf-8"><title>Spillway</title>
      <meta name="viewport" content="width=device-width,initial-scale=1">
      <style>
        body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
        h1 { font-size: 1.3em; } table { border-collapse: collapse; margin: 1em 0; }
        td, th { padding: .25em .8em; text-align: right; border-bottom: 1px solid #eee; }
        th:first-child, td:first-child { text-align: left; }
        .charts { display: flex; gap: 2em; flex-wrap: wrap; } .chart b { display: block; }
        svg { background: #fafafa; border: 1px solid #ddd; } polyline { fill: none; stroke: #36c; stroke-width: 1.5; }
        .log { font: 12px ui-monospace, monospace; white-space: pre-wrap; } .error { color: #b00; } .warn { color: #a60; }
        #state.down { color: #b00; }
      </style></head>
      <body>
      <h1>Spillway <span id="state">connecting…</span></h1>
      <div class="charts">
        <div class="chart"><b>open streams <span id="v-connections">–</span></b><svg id="c-connections" width="240" height="60"></svg></div>
        <div class="chart"><b>deliveries/s <span id="v-deliveries">–</span></b><svg id="c-deliveries" width="240" height="60"></svg></div>
        <div class="chart"><b>publishes/s <span id="v-publishes">–</span></b><svg id="c-publishes" width="240" height="60"></svg></div>
      </div>
      <table id="procs"><thead><tr><th>process</th><th>backend</th><th>streams</th><th>joining</th><th>channels</th>
        <th>deliveries/s</th><th>dropped slow</th><th>resets</th><th>Redis</th><th>reconnects</th><th>errors</th></tr></thead>
        <tbody></tbody></table>
      <h2>Channels, busiest first</h2>
      <table id="chans"><thead><tr><th>channel</th><th>streams</th><th>messages/s</th><th>deliveries/s</th></tr></thead>
        <tbody></tbody></table>
      <h2>Latest errors and resets</h2><div id="log" class="log"></div>
      <script>
      (function () {
        var base = %BASE%, channel = %CHANNEL%, procs = {}, series = { connections: [], deliveries: [], publishes: [] };
        function rate(p, s, key) {
          var prev = p.prev; if (!prev) return 0;
          var dt = s.t - prev.t; return dt > 0 ? Math.max(0, (s.stats[key] - prev.stats[key]) / dt) : 0;
        }
        function draw(name, values) {
          var svg = document.getElementById("c-" + name), w = 240, h = 60, max = Math.max.apply(null, values.concat([1]));
          var pts = values.map(function (v, i) { return (i * w / 59).toFixed(1) + "," + (h - 2 - v / max * (h - 4)).toFixed(1); });
          svg.innerHTML = '<polyline points="' + pts.join(" ") + '"></polyline>';
        }
        function render() {
          var now = Date.now() / 1000, tot = { connections: 0, deliveries: 0, publishes: 0 }, rows = [], log = [];
          Object.keys(procs).forEach(function (pid) {
            var p = procs[pid], s = p.last;
            if (now - s.t > 10) { delete procs[pid]; return; }
            tot.connections += s.stats.connections; tot.deliveries += p.dps; tot.publishes += p.pps;
            rows.push("<tr><td>" + pid + "</td><td>" + s.stats.backend + "</td><td>" + s.stats.connections + "</td><td>" +
              s.stats.joining + "</td><td>" + s.stats.channels + "</td><td>" + p.dps.toFixed(0) + "</td><td>" +
              s.stats.dropped_slow + "</td><td>" + s.stats.resets + "</td><td>" +
              (s.stats.backend === "redis" ? (s.stats.redis_connected ? "up" : "down") : "–") + "</td><td>" +
              s.stats.redis_reconnects + "</td><td>" + s.stats.errors + "</td></tr>");
            s.log.forEach(function (e) { log.push(e); });
          });
          document.querySelector("#procs tbody").innerHTML = rows.join("");
          renderChannels();
          Object.keys(tot).forEach(function (k) {
            series[k].push(tot[k]); if (series[k].length > 60) series[k].shift();
            document.getElementById("v-" + k).textContent = tot[k].toFixed(0); draw(k, series[k]);
          });
          log.sort(function (a, b) { return b.at - a.at; });
          document.getElementById("log").innerHTML = log.slice(0, 20).map(function (e) {
            var d = document.createElement("div"); d.className = e.level;
            d.textContent = new Date(e.at * 1000).toISOString() + " " + e.kind + ": " + e.message + (e.count > 1 ? " (×" + e.count + ")" : "");
            return d.outerHTML;
          }).join("");
        }
        // Every process's busiest channels, merged by name: streams and
        // deliveries add up; each process sees a channel's messages once.
        function renderChannels() {
          var byName = {}, list = [], body = document.querySelector("#chans tbody");
          Object.keys(procs).forEach(function (pid) {
            (procs[pid].last.channels || []).forEach(function (c) {
              var m = byName[c.name] || (byName[c.name] = { name: c.name, subscribers: 0, mps: 0, dps: 0 });
              m.subscribers += c.subscribers; m.mps = Math.max(m.mps, c.messages_per_s); m.dps += c.deliveries_per_s;
            });
          });
          Object.keys(byName).forEach(function (k) { list.push(byName[k]); });
          list.sort(function (a, b) { return b.dps - a.dps || b.mps - a.mps || b.subscribers - a.subscribers || (a.name < b.name ? -1 : 1); });
          body.textContent = "";
          list.slice(0, 20).forEach(function (c) {
            var tr = document.createElement("tr");
            [c.name, c.subscribers, c.mps.toFixed(1), c.dps.toFixed(1)].forEach(function (v) {
              var td = document.createElement("td"); td.textContent = v; tr.appendChild(td);
            });
            body.appendChild(tr);
          });
        }
        var es = new EventSource(base + "/stream?channel=" + encodeURIComponent(channel));
        es.addEventListener("open", function () { var st = document.getElementById("state"); st.textContent = "live"; st.className = ""; });
        es.addEventListener("error", function () { var st = document.getElementById("state"); st.textContent = "reconnecting…"; st.className = "down"; });
        es.addEventListener("snapshot", function (e) {
          var s = JSON.parse(e.data), p = procs[s.stats.pid] || (procs[s.stats.pid] = {});
          p.prev = p.last; p.last = s;
          p.dps = rate(p, s, "delivered"); p.pps = rate(p, s, "published");
        });
        setInterval(render, 1000);
        setInterval(function () { fetch(base + "/ping", { method: "POST", credentials: "same-origin" }); }, %KEEPALIVE% * 1000);
      })();
      </script>
      </body></html>
    HTML
  end
end
