/*
 * twistedpush browser client. No dependencies.
 *
 * WebSocket first, long-poll when WebSocket cannot connect (and WebSocket
 * again as soon as it can); reconnects with backoff and jitter; every channel
 * resumes from the last position it saw, so nothing is lost or repeated
 * across reconnects or a change of transport.
 *
 *   ServerPush.configure({url: "http://host:8013", since: 1700000000000000,
 *                         subscriptions: [{channel: "news", token: null}]});
 *   ServerPush.subscribe("room:1", {token: "...", since: null}, function (data, message) {});
 *   document.addEventListener("serverpush_headline", function (e) { e.detail; });
 *   $(document).bind("serverpush_headline", function (event, data) {});  // with jQuery
 *   $.updates.registerProcessor("room:1", "chat", function (data) {});   // by data.type
 *   $.updates.subscribe({main: "http://host:8013/updates/room:1?token=..."});  // django-pushserver
 *   $.updates.registerProcessor("main", "answer", function (data) {});
 *   document.addEventListener("serverpush_state", function (e) { e.detail.state; });
 *
 * ServerPush.state is one of:
 *   "idle"        nothing to follow: no channel subscribed yet or, over
 *                 long-poll, every channel unsubscribed or refused;
 *   "connecting"  the first attempt is about to start, a WebSocket is opening,
 *                 or a long-poll request waits for its first answer (after
 *                 the fallback or after a failure);
 *   "websocket"   connected over WebSocket;
 *   "longpoll"    live over HTTP polling: the last poll was answered (200).
 *                 WebSocket failed twice, or was left out of `transports`;
 *                 after such a fallback, WebSocket is tried again in the
 *                 background after 30 s, then after intervals doubling up to
 *                 5 min, and replaces polling as soon as it opens;
 *   "waiting"     an attempt failed; the next one starts after a backoff delay
 *                 (doubling from 0.25-0.5 s up to 15-30 s, reset by a success).
 *
 * Events on document:
 *   "serverpush_state"   detail {state, previous}: ServerPush.state changed
 *                        (fired on every change, never twice for one state).
 *   "serverpush_<name>"  an update with that name; detail is its data.
 *   "serverpush_reset"   cancelable; detail {channel, ts}. History no longer
 *                        reaches back to this page's position (a "reset"
 *                        message), or the page's position is ahead of the
 *                        server (a "bad_request" error, ts null; the channel
 *                        is then followed from now on). Unless a listener
 *                        calls preventDefault(), the page reloads.
 *   "serverpush_error"   detail {channel, code, message}: the server refused a
 *                        subscription (forbidden, bad_channel, limit, ...). The
 *                        channel is left alone until the page subscribes to it
 *                        again; "unavailable" is retried with backoff.
 *
 * ServerPush.debug = true (or configure({debug: true})) logs connection
 * attempts, failures with the URL tried, the fallback to long-poll, retries
 * and resets to the console. Errors thrown by the page's handlers, processors
 * and listeners are reported with console.error and do not stop delivery.
 */
(function (global) {
  "use strict";

  var doc = global.document;

  function consoleCall(level, args) {
    var con = global.console;
    if (con && typeof con[level] === "function") {
      con[level].apply(con, ["serverpush:"].concat(args));
    }
  }

  // A handler, processor or listener of the page threw: say so, carry on.
  function report(what, error) {
    consoleCall("error", [what + " threw", error]);
  }

  function isPosition(value) {
    return typeof value === "number" && value >= 0 && Math.floor(value) === value;
  }

  // Trying WebSocket again while on long-poll after a fallback: first after
  // PROBE_FIRST, then after intervals doubling up to PROBE_MAX; a WebSocket
  // that has not opened within PROBE_TIMEOUT counts as failed.
  var PROBE_FIRST = 30000;
  var PROBE_MAX = 300000;
  var PROBE_TIMEOUT = 10000;

  function backoff(attempt) {
    var delay = Math.min(30000, 500 * Math.pow(2, attempt));
    return delay / 2 + Math.random() * delay / 2;  // jitter: no thundering herd after a restart
  }

  // Fire a DOM CustomEvent on document and, with jQuery on the page, a jQuery
  // event with the data as extra argument (the seed's bind(name, fn(event, data))).
  // jQuery also listens to native events of a bound type; marking the type as
  // being triggered (as jQuery itself does) keeps its handlers from running twice.
  // Returns false when a listener prevented the default.
  function fire(name, detail, cancelable) {
    var event;
    if (typeof global.CustomEvent === "function") {
      event = new global.CustomEvent(name, {detail: detail, cancelable: !!cancelable});
    } else {
      event = doc.createEvent("CustomEvent");
      event.initCustomEvent(name, false, !!cancelable, detail);
    }
    var jq = global.jQuery;
    var withJq = !!(jq && jq.fn && jq.fn.trigger && jq.event);
    if (withJq) {
      jq.event.triggered = name;
    }
    try {
      doc.dispatchEvent(event);
    } catch (e) {
      report("a listener of " + name, e);
    } finally {
      if (withJq) {
        jq.event.triggered = undefined;
      }
    }
    var allowed = !event.defaultPrevented;
    if (withJq) {
      var jqEvent = null;
      try {
        jqEvent = jq.Event(name);
        jq(doc).trigger(jqEvent, [detail]);
      } catch (e) {
        report("a jQuery handler of " + name, e);
      }
      allowed = allowed && !(jqEvent && jqEvent.isDefaultPrevented());
    }
    return allowed;
  }

  function Client() {
    this.url = null;
    this.since = null;
    this.debug = false;
    // Keyed by names that come from the page and the server: Maps, never
    // plain objects ("__proto__", "constructor" are fine channel names).
    this.channels = new Map();    // channel -> entry, in subscription order
    this.processors = new Map();  // channel -> Map(data.type -> fn)
    this.mode = "websocket";
    this.socket = null;
    this.open = false;
    this.wsFailures = 0;
    this.attempt = 0;
    this.timer = null;   // the next connection attempt
    this.poller = null;  // the long-poll request in flight
    this.pollOk = false; // the last long-poll answered
    this.fallback = false;        // on long-poll because WebSocket failed
    this.probeDelay = PROBE_FIRST; // until the next WebSocket probe is planned
    this.probeTimer = null;
    this.probeDue = false;        // try WebSocket at the next answered poll
    this.started = false;
    this.state = "idle";
  }

  // Every change of ServerPush.state is told to the page.
  Client.prototype.setState = function (state) {
    var previous = this.state;
    if (state === previous) {
      return;
    }
    this.state = state;
    this.log("state: " + previous + " -> " + state);
    fire("serverpush_state", {state: state, previous: previous}, false);
  };

  Client.prototype.log = function () {
    if (this.debug) {
      consoleCall("log", Array.prototype.slice.call(arguments));
    }
  };

  Client.prototype.configure = function (options) {
    options = options || {};
    if (options.debug !== undefined) {
      this.debug = !!options.debug;
    }
    if (options.url) {
      this.url = String(options.url).replace(/\/+$/, "");
    }
    if (options.since !== undefined && options.since !== null) {
      this.since = options.since;
    }
    if (options.transports && options.transports.indexOf("websocket") < 0) {
      this.mode = "longpoll";
    }
    var subs = options.subscriptions || [];
    for (var i = 0; i < subs.length; i++) {
      this.subscribe(subs[i].channel, {token: subs[i].token, since: subs[i].since});
    }
    return this;
  };

  Client.prototype.subscribe = function (channel, options, handler) {
    if (typeof options === "function") {
      handler = options;
      options = {};
    }
    options = options || {};
    channel = String(channel);
    var entry = this.channels.get(channel);
    if (!entry) {
      var since = options.since !== undefined && options.since !== null ? options.since : this.since;
      entry = {channel: channel, token: null, since: since, handlers: [], names: [],
               failed: null, retryTimer: null, retryAttempt: 0};
      this.channels.set(channel, entry);
    }
    if (options.token !== undefined) {
      entry.token = options.token;
    }
    if (handler) {
      entry.handlers.push(handler);
    }
    entry.failed = null;  // subscribing again takes a refused channel back
    if (entry.retryTimer === null) {  // else its retry is already planned
      this.activate(entry);
    }
    return this;
  };

  Client.prototype.unsubscribe = function (channel) {
    channel = String(channel);
    var entry = this.channels.get(channel);
    if (!entry) {
      return this;
    }
    this.channels.delete(channel);
    this.clearRetry(entry);
    if (this.open) {
      if (entry.failed === null) {
        this.socket.send(JSON.stringify({type: "unsubscribe", channel: channel}));
      }
    } else if (this.poller) {
      this.restartPoll();
    }
    return this;
  };

  Client.prototype.registerProcessor = function (channel, type, fn) {
    channel = String(channel);
    var byType = this.processors.get(channel);
    if (!byType) {
      byType = new Map();
      this.processors.set(channel, byType);
    }
    byType.set(String(type), fn);
    return this;
  };

  Client.prototype.baseUrl = function () {
    if (this.url) {
      return this.url;
    }
    var loc = global.location;
    return loc.protocol + "//" + loc.hostname + ":8013";
  };

  Client.prototype.start = function () {
    if (this.started || !this.channels.size) {
      return;
    }
    this.started = true;
    var self = this;
    this.timer = setTimeout(function () { self.connect(); }, 0);
    this.setState("connecting");
  };

  // Bring one channel to the server, whatever the connection is doing.
  Client.prototype.activate = function (entry) {
    if (!this.started) {
      this.start();
    } else if (this.open) {
      this.sendSubscribe(entry);
    } else if (this.mode === "longpoll" && this.timer === null) {
      this.restartPoll();  // idle or polling: poll again, with this channel
    }
    // Otherwise a WebSocket is opening or an attempt is planned: it takes
    // every channel along.
  };

  Client.prototype.connect = function () {
    this.timer = null;
    if (this.mode === "websocket" && typeof global.WebSocket === "function") {
      this.connectWebSocket();
    } else {
      if (this.mode !== "longpoll") {
        this.log("no WebSocket in this browser: long-poll");
      }
      this.mode = "longpoll";
      this.poll();
    }
  };

  Client.prototype.retry = function () {
    var self = this;
    var delay = backoff(this.attempt);
    this.attempt += 1;
    if (this.timer !== null) {
      clearTimeout(this.timer);
    }
    this.log("next attempt in " + Math.round(delay) + " ms");
    this.timer = setTimeout(function () { self.connect(); }, delay);
    this.setState("waiting");
  };

  // A channel the server could not serve for now ("unavailable"): try it
  // again later, with its own backoff, without holding up the others.
  Client.prototype.retryLater = function (entry) {
    var self = this;
    this.clearRetry(entry);
    var delay = backoff(entry.retryAttempt);
    entry.retryAttempt += 1;
    this.log("channel " + entry.channel + " unavailable: retrying in " + Math.round(delay) + " ms");
    entry.retryTimer = setTimeout(function () {
      entry.retryTimer = null;
      if (self.channels.get(entry.channel) === entry && entry.failed === null) {
        self.activate(entry);
      }
    }, delay);
  };

  Client.prototype.clearRetry = function (entry) {
    if (entry.retryTimer !== null) {
      clearTimeout(entry.retryTimer);
      entry.retryTimer = null;
    }
  };

  // The channels to send the server now: not refused, not waiting for a retry.
  Client.prototype.active = function () {
    var list = [];
    this.channels.forEach(function (entry) {
      if (entry.failed === null && entry.retryTimer === null) {
        list.push(entry);
      }
    });
    return list;
  };

  // WebSocket

  // probe: a try at WebSocket while long-polling goes on. It changes nothing
  // until it opens; then polling stops and the socket takes every channel on
  // from its last position.
  Client.prototype.connectWebSocket = function (probe) {
    var self = this;
    var url = this.baseUrl().replace(/^http/, "ws") + "/ws";
    var socket;
    this.log((probe ? "trying WebSocket again: connecting to " : "connecting to ") + url);
    try {
      socket = new global.WebSocket(url);
    } catch (e) {
      this.log("WebSocket to " + url + " failed: " + e);
      if (probe) {
        this.probeFailed();
      } else {
        this.wsFailed();
      }
      return;
    }
    this.socket = socket;
    var opened = false;
    var guard = null;
    if (probe) {
      // A proxy that swallows the handshake: do not wait for the browser to give up.
      guard = setTimeout(function () {
        guard = null;
        if (self.socket === socket && !opened) {
          self.socket = null;
          try {
            socket.close();
          } catch (e) {
            // closing a socket that is not open yet may throw in old browsers
          }
          self.log("WebSocket to " + url + " did not open within " + PROBE_TIMEOUT + " ms");
          self.probeFailed();
        }
      }, PROBE_TIMEOUT);
    }
    function unguard() {
      if (guard !== null) {
        clearTimeout(guard);
        guard = null;
      }
    }
    socket.onopen = function () {
      if (self.socket !== socket) {
        return;
      }
      unguard();
      opened = true;
      if (probe) {
        self.leaveLongPoll();
      }
      self.open = true;
      self.attempt = 0;
      self.wsFailures = 0;
      self.probeDelay = PROBE_FIRST;
      self.log("connected to " + url);
      var entries = self.active();
      for (var i = 0; i < entries.length; i++) {
        self.sendSubscribe(entries[i]);
      }
      self.setState("websocket");
    };
    socket.onmessage = function (event) {
      var message;
      try {
        message = JSON.parse(event.data);
      } catch (e) {
        return;
      }
      if (message && typeof message === "object") {
        self.handle(message);
      }
    };
    socket.onclose = function (event) {
      if (self.socket !== socket) {
        return;
      }
      unguard();
      self.open = false;
      self.socket = null;
      var code = event && event.code ? " (close code " + event.code + ")" : "";
      if (!opened) {
        self.log("WebSocket to " + url + " failed" + code);
        if (probe) {
          self.probeFailed();
        } else {
          self.wsFailed();
        }
      } else {
        self.log("WebSocket to " + url + " closed" + code);
        self.retry();
      }
    };
    if (!probe) {
      this.setState("connecting");
    }
  };

  Client.prototype.wsFailed = function () {
    this.wsFailures += 1;
    if (this.wsFailures >= 2) {
      // WebSocket blocked on this network, or the server down: poll instead,
      // and try WebSocket again now and then (one cannot tell which).
      this.mode = "longpoll";
      this.fallback = true;
      this.attempt = 0;
      this.pollOk = false;
      this.log("WebSocket failed " + this.wsFailures + " times: falling back to long-poll at " +
               this.baseUrl() + "/poll");
      this.planProbe();
      this.connect();
    } else {
      this.retry();
    }
  };

  // Plan the next try at WebSocket while on long-poll; the interval doubles
  // each time, up to PROBE_MAX, and starts over once a WebSocket opens.
  Client.prototype.planProbe = function () {
    var self = this;
    this.cancelProbe();
    if (!this.fallback || typeof global.WebSocket !== "function") {
      return;
    }
    var delay = this.probeDelay;
    this.probeDelay = Math.min(PROBE_MAX, delay * 2);
    this.log("trying WebSocket again in " + Math.round(delay / 1000) + " s");
    this.probeTimer = setTimeout(function () {
      self.probeTimer = null;
      self.probeDue = true;
      if (self.pollOk && self.poller) {
        self.probe();  // the server answers polls: try now, polling goes on meanwhile
      }  // otherwise once a poll is answered (the server may well be down)
    }, delay);
  };

  Client.prototype.cancelProbe = function () {
    if (this.probeTimer !== null) {
      clearTimeout(this.probeTimer);
      this.probeTimer = null;
    }
    this.probeDue = false;
  };

  Client.prototype.probe = function () {
    this.probeDue = false;
    if (this.mode === "longpoll" && this.fallback && this.socket === null) {
      this.connectWebSocket(true);
    }
  };

  Client.prototype.probeFailed = function () {
    this.log("WebSocket still fails: staying on long-poll");
    this.planProbe();
  };

  // A probe opened: stop polling before the socket subscribes. The poll in
  // flight is dropped unanswered, so positions stay where the last answer
  // left them and the socket resumes every channel from there: nothing lost;
  // an update both could bring is dropped by its ts.
  Client.prototype.leaveLongPoll = function () {
    this.log("WebSocket is back: leaving long-poll");
    this.mode = "websocket";
    this.fallback = false;
    this.pollOk = false;
    this.cancelProbe();
    if (this.timer !== null) {  // a poll planned after a failure
      clearTimeout(this.timer);
      this.timer = null;
    }
    var old = this.poller;
    this.poller = null;
    if (old) {
      old.abort();
    }
  };

  Client.prototype.sendSubscribe = function (entry) {
    this.socket.send(JSON.stringify({
      type: "subscribe", channel: entry.channel, since: entry.since, token: entry.token
    }));
  };

  // Long-poll

  Client.prototype.poll = function () {
    var self = this;
    var sent = this.active();
    if (!sent.length) {
      this.poller = null;
      this.pollOk = false;  // the next poll, whenever, has to be answered again
      var waiting = false;
      this.channels.forEach(function (entry) { waiting = waiting || entry.retryTimer !== null; });
      this.setState(waiting ? "waiting" : "idle");
      return;
    }
    var subscriptions = [];
    for (var i = 0; i < sent.length; i++) {
      subscriptions.push({channel: sent[i].channel, since: sent[i].since, token: sent[i].token});
    }
    var url = this.baseUrl() + "/poll";
    if (!this.pollOk) {
      this.log("long-poll to " + url);
    }
    var xhr;
    try {
      xhr = new global.XMLHttpRequest();
      xhr.open("POST", url);
      xhr.setRequestHeader("Content-Type", "application/json");
    } catch (e) {
      this.poller = null;
      this.pollFailed(url, String(e));
      return;
    }
    this.poller = xhr;
    xhr.timeout = 60000;  // the server answers within 25 s: a silent network is a failure
    xhr.onload = function () {
      if (self.poller === xhr) {
        self.poller = null;
        self.answered(xhr, sent, url);
      }
    };
    xhr.onerror = xhr.ontimeout = function () {
      if (self.poller === xhr) {
        self.poller = null;
        self.pollFailed(url, "no answer (server down, wrong URL or refused by CORS)");
      }
    };
    xhr.send(JSON.stringify({subscriptions: subscriptions, timeout: 25}));
    // Live only once the server answers: a poll sent is not a poll answered.
    this.setState(this.pollOk ? "longpoll" : "connecting");
  };

  Client.prototype.answered = function (xhr, sent, url) {
    var body = null;
    try {
      body = JSON.parse(xhr.responseText);
    } catch (e) {
      body = null;
    }
    var messages = body && Array.isArray(body.messages) ? body.messages : null;
    if (xhr.status !== 200 || !messages) {
      var why = "HTTP " + xhr.status;
      var first = messages && messages[0];
      if (first && first.code) {
        why += " (" + first.code + ": " + first.message + ")";
      }
      this.pollFailed(url, why);
      return;
    }
    this.attempt = 0;
    this.pollOk = true;
    this.setState("longpoll");
    var updated = new Set();  // channels that continue from their last update
    var refused = new Set();  // channels that got an error: the cursor is not theirs
    for (var i = 0; i < messages.length; i++) {
      var message = messages[i];
      if (!message || typeof message !== "object") {
        continue;
      }
      if (message.type === "update") {
        updated.add(message.channel);
      } else if (message.type === "error") {
        refused.add(message.channel);
      }
      try {
        this.handle(message);
      } catch (e) {
        report("handling a message", e);
      }
    }
    for (var j = 0; j < sent.length; j++) {
      var entry = sent[j];
      if (this.channels.get(entry.channel) !== entry || refused.has(entry.channel)) {
        continue;
      }
      entry.retryAttempt = 0;
      if (!updated.has(entry.channel) && typeof body.ts === "number" &&
          (entry.since === null || body.ts > entry.since)) {
        entry.since = body.ts;
      }
    }
    if (this.probeDue) {
      this.probe();  // the server is up: time to try WebSocket again
    }
    // Also drops a poll a handler may have started meanwhile: positions moved.
    this.restartPoll();
  };

  Client.prototype.pollFailed = function (url, why) {
    this.pollOk = false;
    this.log("long-poll to " + url + " failed: " + why);
    this.retry();
  };

  Client.prototype.restartPoll = function () {
    var old = this.poller;
    this.poller = null;
    if (old) {
      old.abort();
    }
    this.poll();
  };

  // Messages

  Client.prototype.handle = function (message) {
    var entry = this.channels.get(message.channel);
    if (message.type === "error") {
      this.handleError(entry, message);
      return;
    }
    if (!entry) {
      return;
    }
    if (message.type === "update") {
      if (entry.since !== null && message.ts <= entry.since) {
        return;  // already seen (a replay that overlaps what arrived live)
      }
      entry.since = message.ts;
      this.dispatch(entry, message);
    } else if (message.type === "subscribed") {
      entry.retryAttempt = 0;
      if (entry.since === null || message.ts > entry.since) {
        entry.since = message.ts;
      }
    } else if (message.type === "reset") {
      entry.since = message.ts;
      this.reset(entry, message.ts);
    }
  };

  Client.prototype.handleError = function (entry, message) {
    var code = message.code;
    if (entry && code === "bad_request" && isPosition(entry.since)) {
      // A well-formed position refused: it is ahead of the server (contract
      // v2) and cannot be resumed. As for a reset: the page reloads unless it
      // handles that, and the channel is followed from now on. (A malformed
      // `since` is the page's own error: reported below, never a reload loop.)
      this.log("channel " + entry.channel + ": position " + entry.since +
               " refused (" + message.message + "): following it from now on");
      entry.since = null;
      this.reset(entry, null);
      if (this.open && this.channels.get(entry.channel) === entry) {
        this.sendSubscribe(entry);
      }  // over long-poll the next request carries since: null
      return;
    }
    var detail = {channel: message.channel === undefined ? null : message.channel,
                  code: code, message: message.message};
    if (entry && code === "unavailable") {
      this.retryLater(entry);
    } else {
      if (entry) {
        entry.failed = code || "error";  // not retried until the page subscribes again
        this.clearRetry(entry);
      }
      consoleCall("error", [(detail.channel !== null ? "channel " + detail.channel + ": " : "") +
                            code + ": " + message.message]);
    }
    fire("serverpush_error", detail, false);
  };

  Client.prototype.reset = function (entry, ts) {
    this.log("reset of channel " + entry.channel);
    if (fire("serverpush_reset", {channel: entry.channel, ts: ts}, true)) {
      this.log("reloading the page");
      global.location.reload();
    }
  };

  Client.prototype.dispatch = function (entry, message) {
    var data = message.data;
    var handlers = entry.handlers.slice();
    for (var i = 0; i < handlers.length; i++) {
      try {
        handlers[i](data, message);
      } catch (e) {
        report("a handler of channel " + entry.channel, e);
      }
    }
    if (data && typeof data === "object" && data.type !== undefined && data.type !== null) {
      // Processors registered for the channel, and for the names pages gave it
      // (django-pushserver's {name: url} subscriptions).
      var keys = [entry.channel].concat(entry.names);
      for (var k = 0; k < keys.length; k++) {
        var byType = this.processors.get(keys[k]);
        var processor = byType && byType.get(String(data.type));
        if (processor) {
          try {
            processor(data, message);
          } catch (e) {
            report("the processor " + data.type + " of channel " + keys[k], e);
          }
        }
      }
    }
    if (message.name) {
      fire("serverpush_" + message.name, data, false);
    }
  };

  var client = new Client();
  global.ServerPush = client;

  var RELAY_PATH = "/updates/";

  // A push-relay subscriber URL, as django-pushserver's {% channel_url %} renders
  // it: the push server, the channel and its token. Null for anything else.
  function channelUrl(value) {
    var at = typeof value === "string" ? value.indexOf(RELAY_PATH) : -1;
    if (at < 0) {
      return null;
    }
    var rest = value.slice(at + RELAY_PATH.length).split("#")[0];
    var query = rest.indexOf("?") >= 0 ? rest.slice(rest.indexOf("?") + 1) : "";
    var token = null;
    var pairs = query.split("&");
    for (var i = 0; i < pairs.length; i++) {
      if (pairs[i].indexOf("token=") === 0) {
        token = decodeURIComponent(pairs[i].slice("token=".length));
      }
    }
    return {server: value.slice(0, at), channel: decodeURIComponent(rest.split("?")[0]),
            token: token};
  }

  // The django-pushserver style API, on jQuery when present.
  var updates = {
    // A channel, a list of channels, {channel: token}, or django-pushserver's
    // {name: channel URL}: the channel is followed (over WebSocket or long-poll,
    // as any other) and processors registered under the name get its updates.
    // The first absolute channel URL also names the push server, unless the
    // page configured one.
    subscribe: function (channels) {
      if (typeof channels === "string") {
        client.subscribe(channels, {});
      } else if (Array.isArray(channels)) {
        for (var i = 0; i < channels.length; i++) {
          client.subscribe(channels[i], {});
        }
      } else {
        var names = Object.keys(channels);
        for (var j = 0; j < names.length; j++) {
          var url = null;
          try {
            url = channelUrl(channels[names[j]]);
          } catch (e) {
            report("reading the channel URL of " + names[j], e);
            continue;
          }
          if (url === null) {
            client.subscribe(names[j], {token: channels[names[j]]});
            continue;
          }
          if (!client.url && /^https?:\/\//.test(url.server)) {
            client.url = url.server;
          }
          client.subscribe(url.channel, {token: url.token});
          var entry = client.channels.get(url.channel);
          if (names[j] !== url.channel && entry.names.indexOf(names[j]) < 0) {
            entry.names.push(names[j]);
          }
        }
      }
      return updates;
    },
    unsubscribe: function (channel) {
      client.unsubscribe(channel);
      return updates;
    },
    registerProcessor: function (channel, type, fn) {
      client.registerProcessor(channel, type, fn);
      return updates;
    }
  };
  client.updates = updates;
  if (global.jQuery) {
    global.jQuery.updates = updates;
  }

  if (global.SERVERPUSH_CONFIG) {
    client.configure(global.SERVERPUSH_CONFIG);
  }
})(window);
