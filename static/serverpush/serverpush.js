/*
 * twistedpush browser client. No dependencies.
 *
 * WebSocket first, long-poll when WebSocket cannot connect; reconnects with
 * backoff and jitter; every channel resumes from the last position it saw, so
 * nothing is lost or repeated across reconnects.
 *
 *   ServerPush.configure({url: "http://host:8013", since: 1700000000000000,
 *                         subscriptions: [{channel: "news", token: null}]});
 *   ServerPush.subscribe("room:1", {token: "...", since: null}, function (data, message) {});
 *   document.addEventListener("serverpush_headline", function (e) { e.detail; });
 *   $(document).bind("serverpush_headline", function (event, data) {});  // with jQuery
 *   $.updates.registerProcessor("room:1", "chat", function (data) {});   // by data.type
 *
 * On "reset" (history no longer reaches back to this page's position) the
 * cancelable event "serverpush_reset" fires on document; unless a listener
 * calls preventDefault(), the page reloads.
 */
(function (global) {
  "use strict";

  var doc = global.document;

  // Fire a DOM CustomEvent on document and, with jQuery on the page, a jQuery
  // event with the data as extra argument (the seed's bind(name, fn(event, data))).
  // jQuery also listens to native events of a bound type; marking the type as
  // being triggered (as jQuery itself does) keeps its handlers from running twice.
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
    } finally {
      if (withJq) {
        jq.event.triggered = undefined;
      }
    }
    var allowed = !event.defaultPrevented;
    if (withJq) {
      var jqEvent = jq.Event(name);
      jq(doc).trigger(jqEvent, [detail]);
      allowed = allowed && !jqEvent.isDefaultPrevented();
    }
    return allowed;
  }

  function Client() {
    this.url = null;
    this.since = null;
    this.channels = {};
    this.order = [];
    this.processors = {};
    this.mode = "websocket";
    this.socket = null;
    this.open = false;
    this.wsFailures = 0;
    this.attempt = 0;
    this.timer = null;
    this.poller = null;
    this.started = false;
    this.state = "idle";
  }

  Client.prototype.configure = function (options) {
    options = options || {};
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
    var entry = this.channels[channel];
    if (!entry) {
      var since = options.since !== undefined && options.since !== null ? options.since : this.since;
      entry = this.channels[channel] = {channel: channel, token: null, since: since, handlers: []};
      this.order.push(channel);
    }
    if (options.token !== undefined) {
      entry.token = options.token;
    }
    if (handler) {
      entry.handlers.push(handler);
    }
    this.start();
    if (this.open) {
      this.sendSubscribe(entry);
    } else if (this.poller) {
      this.restartPoll();
    }
    return this;
  };

  Client.prototype.unsubscribe = function (channel) {
    if (!this.channels[channel]) {
      return this;
    }
    delete this.channels[channel];
    this.order.splice(this.order.indexOf(channel), 1);
    if (this.open) {
      this.socket.send(JSON.stringify({type: "unsubscribe", channel: channel}));
    } else if (this.poller) {
      this.restartPoll();
    }
    return this;
  };

  Client.prototype.registerProcessor = function (channel, type, fn) {
    (this.processors[channel] = this.processors[channel] || {})[type] = fn;
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
    if (this.started || !this.order.length) {
      return;
    }
    this.started = true;
    var self = this;
    setTimeout(function () { self.connect(); }, 0);
  };

  Client.prototype.connect = function () {
    this.timer = null;
    if (this.mode === "websocket" && typeof global.WebSocket === "function") {
      this.connectWebSocket();
    } else {
      this.mode = "longpoll";
      this.poll();
    }
  };

  Client.prototype.retry = function () {
    var self = this;
    var delay = Math.min(30000, 500 * Math.pow(2, this.attempt));
    this.attempt += 1;
    delay = delay / 2 + Math.random() * delay / 2;  // jitter: no thundering herd after a restart
    this.state = "waiting";
    this.timer = setTimeout(function () { self.connect(); }, delay);
  };

  // WebSocket

  Client.prototype.connectWebSocket = function () {
    var self = this;
    var url = this.baseUrl().replace(/^http/, "ws") + "/ws";
    var socket;
    try {
      socket = new global.WebSocket(url);
    } catch (e) {
      this.wsFailed();
      return;
    }
    this.socket = socket;
    this.state = "connecting";
    var opened = false;
    socket.onopen = function () {
      opened = true;
      self.open = true;
      self.attempt = 0;
      self.wsFailures = 0;
      self.state = "websocket";
      for (var i = 0; i < self.order.length; i++) {
        self.sendSubscribe(self.channels[self.order[i]]);
      }
    };
    socket.onmessage = function (event) {
      var message;
      try {
        message = JSON.parse(event.data);
      } catch (e) {
        return;
      }
      self.handle(message);
    };
    socket.onclose = function () {
      self.open = false;
      self.socket = null;
      if (!opened) {
        self.wsFailed();
      } else {
        self.retry();
      }
    };
  };

  Client.prototype.wsFailed = function () {
    this.wsFailures += 1;
    if (this.wsFailures >= 2) {
      this.mode = "longpoll";  // WebSocket blocked on this network: poll instead
      this.attempt = 0;
      this.connect();
    } else {
      this.retry();
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
    if (!this.order.length) {
      this.poller = null;
      return;
    }
    var subscriptions = [];
    for (var i = 0; i < this.order.length; i++) {
      var entry = this.channels[this.order[i]];
      subscriptions.push({channel: entry.channel, since: entry.since, token: entry.token});
    }
    var xhr = new global.XMLHttpRequest();
    this.poller = xhr;
    this.state = "longpoll";
    xhr.open("POST", this.baseUrl() + "/poll");
    xhr.setRequestHeader("Content-Type", "application/json");
    xhr.onload = function () {
      if (self.poller !== xhr) {
        return;
      }
      var body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch (e) {
        body = null;
      }
      if (xhr.status !== 200 || !body) {
        self.poller = null;
        self.retry();
        return;
      }
      self.attempt = 0;
      var updated = {};
      for (var j = 0; j < body.messages.length; j++) {
        var message = body.messages[j];
        if (message.type === "update") {
          updated[message.channel] = true;
        }
        self.handle(message);
      }
      for (var name in self.channels) {
        var ch = self.channels[name];
        if (!updated[name] && body.ts !== null && (ch.since === null || body.ts > ch.since)) {
          ch.since = body.ts;
        }
      }
      self.poll();
    };
    xhr.onerror = function () {
      if (self.poller === xhr) {
        self.poller = null;
        self.retry();
      }
    };
    xhr.send(JSON.stringify({subscriptions: subscriptions, timeout: 25}));
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
    var entry = this.channels[message.channel];
    if (message.type === "error") {
      fire("serverpush_error", message, false);
      if (entry && message.code === "unavailable" && this.open) {
        var self = this;
        setTimeout(function () {
          if (self.open && self.channels[entry.channel] === entry) {
            self.sendSubscribe(entry);
          }
        }, 1000 + Math.random() * 1000);
      }
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
      if (entry.since === null || message.ts > entry.since) {
        entry.since = message.ts;
      }
    } else if (message.type === "reset") {
      entry.since = message.ts;
      if (fire("serverpush_reset", {channel: message.channel, ts: message.ts}, true)) {
        global.location.reload();
      }
    }
  };

  Client.prototype.dispatch = function (entry, message) {
    var data = message.data;
    for (var i = 0; i < entry.handlers.length; i++) {
      entry.handlers[i](data, message);
    }
    var processors = this.processors[entry.channel];
    if (processors && data && typeof data === "object" && processors[data.type]) {
      processors[data.type](data, message);
    }
    if (message.name) {
      fire("serverpush_" + message.name, data, false);
    }
  };

  var client = new Client();
  global.ServerPush = client;

  // The django-pushserver style API, on jQuery when present.
  var updates = {
    subscribe: function (channels) {
      if (typeof channels === "string") {
        client.subscribe(channels, {});
      } else if (channels instanceof Array) {
        for (var i = 0; i < channels.length; i++) {
          client.subscribe(channels[i], {});
        }
      } else {
        for (var name in channels) {
          client.subscribe(name, {token: channels[name]});
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
