/*! spillway.js: the browser client of Spillway (served at <mount>/client.js).
 *
 *   const bus = new SpillwayClient("/stream");
 *   bus.subscribe("chat:42", (data, msg) => ...);   // msg: {id, event, channel}
 *   bus.on("reset", channels => ...);
 *
 * One stream per browser: the tabs elect a leader (Web Locks); it reads
 * <mount>?include=channel&channel=... with fetch and hands every message to
 * the other tabs (BroadcastChannel). A stalled stream (no byte for two
 * heartbeats, as behind a buffering proxy) gives way to transport=long-poll.
 * Messages are deduplicated by id per channel; the cursor survives
 * reconnects and leader changes.
 */
(function (root) {
  "use strict";

  // Ids are "<ms>-<seq>": compared as two numbers.
  function idAfter(a, b) {
    if (b == null) return true;
    if (a == null) return false;
    var x = String(a).split("-"), y = String(b).split("-");
    var d = Number(x[0]) - Number(y[0]);
    if (d !== 0) return d > 0;
    return Number(x[1] || 0) > Number(y[1] || 0);
  }

  // An incremental text/event-stream parser: feed(text) calls onFrame for
  // every complete frame ({id, event, data, channel}) and onRetry(ms).
  function Parser(onFrame, onRetry) {
    var buf = "", id = null, event = null, channel = null, data = null;
    function line(l) {
      if (l === "") {
        if (data !== null) onFrame({ id: id, event: event || "message", data: data, channel: channel });
        id = event = channel = data = null;
        return;
      }
      if (l.charCodeAt(0) === 58) return; // ":" comment (heartbeats, the opening)
      var c = l.indexOf(":"), name = c < 0 ? l : l.slice(0, c), value = c < 0 ? "" : l.slice(c + 1);
      if (value.charCodeAt(0) === 32) value = value.slice(1);
      if (name === "data") data = data === null ? value : data + "\n" + value;
      else if (name === "id") id = value;
      else if (name === "event") event = value;
      else if (name === "channel") channel = value;
      else if (name === "retry" && /^\d+$/.test(value)) onRetry(Number(value));
    }
    this.feed = function (text) {
      buf += text;
      var start = 0;
      for (var i = 0; i < buf.length; i++) {
        var ch = buf.charCodeAt(i);
        if (ch === 10 || ch === 13) {
          if (ch === 13 && i + 1 === buf.length) break; // a CR that may be half of CRLF
          line(buf.slice(start, i));
          if (ch === 13 && buf.charCodeAt(i + 1) === 10) i++;
          start = i + 1;
        }
      }
      buf = buf.slice(start);
    };
  }

  function SpillwayClient(url, options) {
    var o = options || {};
    this.url = new URL(url, root.location && root.location.href).href;
    this.heartbeat = (o.heartbeat || 15) * 1000; // the server's heartbeat, seconds
    this.streamRetry = (o.streamRetry || 60) * 1000; // after a stall: long-poll this long, then try the stream again
    this.maxBackoff = (o.maxBackoff || 30) * 1000;
    this.hiddenDelay = (o.hiddenPollDelay == null ? 2 : o.hiddenPollDelay) * 1000; // between long-polls in a background tab
    this.debounce = o.debounce == null ? 30 : o.debounce; // ms before a changed channel set reconnects
    this.retryMs = 2000; // until the server's retry: says otherwise
    this.lastId = o.lastEventId || null;
    this.subs = new Map(); // channel -> [fn]
    this.seen = new Map(); // channel -> last id delivered here
    this.handlers = { reset: [], status: [] };
    this.tab = Math.random().toString(36).slice(2) + Date.now().toString(36);
    this.remote = new Map(); // tab -> [channels] of the other tabs
    this.leader = false;
    this.leaderTab = null;
    this.state = "connecting";
    this.transport = null;
    this.reconnects = 0; // after a failure, an end or a stall
    this.resubscribes = 0; // for a changed channel set
    this.failures = 0;
    this.received = 0;
    this.lastError = null;
    this.stalls = 0;
    this.connected = null; // the channel set of the current connection
    this.abort = null;
    this.timer = null;
    this.closed = false;
    this.pollUntil = 0; // long-poll instead of the stream until then
    var self = this;
    var shared = o.shared !== false && root.navigator && root.navigator.locks && root.BroadcastChannel;
    if (shared) {
      this.bc = new root.BroadcastChannel("spillway:" + this.url);
      this.bc.onmessage = function (e) { self._onBroadcast(e.data); };
      this._post({ t: "hello", tab: this.tab });
      root.navigator.locks.request("spillway:" + this.url, function () {
        if (self.closed) return null;
        return new Promise(function (release) { self.release = release; self._lead(); });
      });
      this._setStatus("follower");
    } else {
      this._lead();
    }
    if (root.addEventListener) {
      root.addEventListener("pagehide", function () { self._post({ t: "bye", tab: self.tab }); });
    }
  }

  var P = SpillwayClient.prototype;

  P.subscribe = function (channel, fn) {
    channel = String(channel);
    var list = this.subs.get(channel);
    if (!list) this.subs.set(channel, (list = []));
    list.push(fn);
    this._changed();
    return fn;
  };

  P.unsubscribe = function (channel, fn) {
    var list = this.subs.get(channel);
    if (!list) return;
    if (fn) list = list.filter(function (f) { return f !== fn; });
    if (!fn || list.length === 0) this.subs.delete(channel);
    else this.subs.set(channel, list);
    this._changed();
  };

  P.on = function (name, fn) {
    (this.handlers[name] || (this.handlers[name] = [])).push(fn);
    return this;
  };

  P.status = function () { return this.state; };

  P.diagnostics = function () {
    return {
      status: this.state, leader: this.leader, tab: this.tab, leaderTab: this.leaderTab,
      transport: this.transport, lastId: this.lastId, reconnects: this.reconnects,
      resubscribes: this.resubscribes, stalls: this.stalls,
      received: this.received, retryMs: this.retryMs, heartbeatMs: this.heartbeat,
      channels: Array.from(this.subs.keys()), streamChannels: this.connected ? this.connected.slice() : [],
      otherTabs: this.remote.size, lastError: this.lastError
    };
  };

  P.close = function () {
    if (this.closed) return;
    this.closed = true;
    this._stop();
    this._post({ t: "bye", tab: this.tab });
    if (this.bc) this.bc.close();
    if (this.release) this.release();
    this._setStatus("closed");
  };

  P._emit = function (name, arg) {
    (this.handlers[name] || []).forEach(function (fn) {
      try { fn(arg); } catch (e) { setTimeout(function () { throw e; }); }
    });
  };

  P._setStatus = function (s) {
    if (this.state === s) return;
    this.state = s;
    this._emit("status", s);
    if (this.leader) this._post({ t: "state", tab: this.tab, status: s, transport: this.transport });
  };

  P._post = function (m) {
    if (this.bc && !this.closed) try { this.bc.postMessage(m); } catch (e) { /* closed */ }
  };

  // Every tab tells the others its channels; the leader streams the union.
  P._changed = function () {
    this._post({ t: "subs", tab: this.tab, channels: Array.from(this.subs.keys()) });
    if (this.leader) this._schedule(this.debounce);
  };

  P._wanted = function () {
    var all = new Set(this.subs.keys());
    this.remote.forEach(function (list) { list.forEach(function (c) { all.add(c); }); });
    return Array.from(all).sort();
  };

  P._onBroadcast = function (m) {
    if (!m || this.closed) return;
    switch (m.t) {
      case "hello": // a new tab, or a new leader: it wants everyone's channels
        if (m.leader) this.leaderTab = m.tab;
        this._post({ t: "subs", tab: this.tab, channels: Array.from(this.subs.keys()) });
        if (this.leader) this._post({ t: "state", tab: this.tab, status: this.state, transport: this.transport });
        break;
      case "subs":
        if (m.channels.length) this.remote.set(m.tab, m.channels);
        else this.remote.delete(m.tab);
        if (this.leader) this._schedule(this.debounce);
        break;
      case "bye":
        this.remote.delete(m.tab);
        if (this.leader) this._schedule(this.debounce);
        break;
      case "msg":
        this._frame(m.f, false);
        break;
      case "state":
        this.leaderTab = m.tab;
        this.transport = m.transport;
        break;
    }
  };

  P._lead = function () {
    if (this.closed) return;
    this.leader = true;
    this.leaderTab = this.tab;
    this.remote.delete(this.tab);
    this._post({ t: "hello", tab: this.tab, leader: true });
    this._setStatus("connecting");
    this._schedule(this.debounce);
  };

  // A frame from the server (leader) or from the leader (follower).
  P._frame = function (f, fromServer) {
    if (fromServer) this._post({ t: "msg", f: f });
    if (f.id && idAfter(f.id, this.lastId)) this.lastId = f.id;
    if (f.event === "reset") {
      var channels = [];
      try { channels = JSON.parse(f.data).channels || []; } catch (e) { /* not JSON */ }
      var mine = channels.filter(function (c) { return this.subs.has(c); }, this);
      if (mine.length) this._emit("reset", mine);
      return;
    }
    if (!f.channel) return;
    var list = this.subs.get(f.channel);
    if (!list) return;
    if (f.id) {
      if (!idAfter(f.id, this.seen.get(f.channel))) return; // had it already
      this.seen.set(f.channel, f.id);
    }
    this.received++;
    var msg = { id: f.id, event: f.event, channel: f.channel };
    list.slice().forEach(function (fn) {
      try { fn(f.data, msg); } catch (e) { setTimeout(function () { throw e; }); }
    });
  };

  P._stop = function () {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.abort) this.abort.abort();
    this.abort = null;
    this.connected = null;
  };

  // (Re)connects after delay ms, from the cursor, with the current union.
  P._schedule = function (delay) {
    if (!this.leader || this.closed) return;
    var wanted = this._wanted();
    if (this.connected && String(this.connected) === String(wanted) && delay === this.debounce) return;
    var self = this;
    clearTimeout(this.timer);
    this.timer = setTimeout(function () { self._connect(); }, delay);
  };

  P._query = function (channels, transport) {
    var q = channels.map(function (c) { return "channel=" + encodeURIComponent(c); });
    q.push("include=channel");
    if (transport) q.push("transport=" + transport);
    if (this.lastId) q.push("lastEventId=" + encodeURIComponent(this.lastId));
    return this.url + (this.url.indexOf("?") < 0 ? "?" : "&") + q.join("&");
  };

  P._connect = function () {
    if (this.connected) this.resubscribes++;
    this._stop();
    if (!this.leader || this.closed) return;
    var channels = this._wanted();
    if (!channels.length) { this.transport = null; this._setStatus("idle"); return; }
    this.connected = channels;
    var ctl = (this.abort = new AbortController());
    var poll = Date.now() < this.pollUntil;
    this.transport = poll ? "long-poll" : "stream";
    if (!poll && this.state !== "streaming") this._setStatus("connecting");
    (poll ? this._longPoll(channels, ctl) : this._stream(channels, ctl)).then(null, function () { });
  };

  // Waits, then connects again: retry: with exponential backoff and jitter.
  P._retry = function (ctl, err) {
    if (ctl.done || (ctl.signal.aborted && !ctl.stalled)) return;
    ctl.done = true;
    if (err && !ctl.stalled) { this.failures++; this.lastError = String(err && err.message || err); }
    this.reconnects++;
    this.abort = null;
    this.connected = null;
    var base = Math.min(this.maxBackoff, this.retryMs * Math.pow(2, Math.min(this.failures, 10)));
    var delay = err ? base / 2 + Math.random() * base / 2 : this.retryMs * (0.5 + Math.random() / 2);
    if (ctl.stalled) delay = 0;
    if (this.state !== "long-polling") this._setStatus("connecting");
    var self = this;
    clearTimeout(this.timer);
    this.timer = setTimeout(function () { self._connect(); }, delay);
  };

  P._stream = function (channels, ctl) {
    var self = this, parser = this._parser(), watchdog;
    var stall = function () {
      clearTimeout(watchdog);
      watchdog = setTimeout(function () { // no byte for two heartbeats
        self.stalls++;
        self.lastError = "stream stalled";
        self.pollUntil = Date.now() + self.streamRetry;
        ctl.stalled = true;
        ctl.abort();
        self._retry(ctl);
      }, 2 * self.heartbeat);
    };
    stall();
    return fetch(this._query(channels), { signal: ctl.signal, cache: "no-store", credentials: "same-origin",
                                          headers: { Accept: "text/event-stream" } })
      .then(function (res) {
        if (!res.ok || !res.body) throw new Error("stream answered " + res.status);
        var reader = res.body.getReader(), decoder = new TextDecoder();
        var step = function (r) {
          if (r.done) return;
          stall();
          if (!ctl.stalled) {
            self.failures = 0;
            self._setStatus("streaming");
          }
          parser.feed(decoder.decode(r.value, { stream: true }));
          return reader.read().then(step);
        };
        return reader.read().then(step);
      })
      .then(function () { clearTimeout(watchdog); self._retry(ctl); },
            function (e) { clearTimeout(watchdog); self._retry(ctl, e); });
  };

  P._longPoll = function (channels, ctl) {
    var self = this;
    this._setStatus("long-polling");
    return fetch(this._query(channels, "long-poll"), { signal: ctl.signal, cache: "no-store", credentials: "same-origin" })
      .then(function (res) {
        if (!res.ok) throw new Error("long-poll answered " + res.status);
        return res.text();
      })
      .then(function (text) {
        self.failures = 0;
        self._parser().feed(text + "\n\n");
        if (ctl.signal.aborted) return;
        self.abort = null;
        self.connected = null;
        var hidden = root.document && root.document.hidden;
        clearTimeout(self.timer);
        self.timer = setTimeout(function () { self._connect(); }, hidden ? self.hiddenDelay : 0);
      }, function (e) { self._retry(ctl, e); });
  };

  P._parser = function () {
    var self = this;
    return new Parser(function (f) { self._frame(f, true); },
                      function (ms) { self.retryMs = Math.max(ms, 100); });
  };

  SpillwayClient.Parser = Parser;
  root.SpillwayClient = SpillwayClient;
  if (typeof module === "object" && module.exports) module.exports = SpillwayClient;
})(typeof self !== "undefined" ? self : this);
