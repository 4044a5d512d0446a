"use strict";
// A page for static/serverpush/serverpush.js, in Node: the client runs in its
// own `node:vm` realm with a fake window, document, WebSocket, XMLHttpRequest,
// timers (advanced by hand) and console. The test plays the push server.
//
// SERVERPUSH_JS=path runs the same tests against another copy of the client.

const fs = require("node:fs");
const path = require("node:path");
const vm = require("node:vm");

const ROOT = path.join(__dirname, "..", "..");
const CLIENT = process.env.SERVERPUSH_JS || path.join(ROOT, "static", "serverpush", "serverpush.js");
const SOURCE = fs.readFileSync(CLIENT, "utf8");

const URL = "http://push.test:8013";

class Clock {
  constructor() {
    this.now = 0;
    this.lastId = 0;
    this.timers = new Map();
  }

  setTimeout(fn, delay) {
    const id = ++this.lastId;
    this.timers.set(id, {id, at: this.now + Math.max(0, Number(delay) || 0), fn});
    return id;
  }

  clearTimeout(id) {
    this.timers.delete(id);
  }

  next() {
    let first = null;
    for (const timer of this.timers.values()) {
      if (first === null || timer.at < first.at || (timer.at === first.at && timer.id < first.id)) {
        first = timer;
      }
    }
    return first;
  }

  // Run every timer due within `ms`, in order, then stand at now + ms.
  advance(ms) {
    const end = this.now + ms;
    for (let timer = this.next(); timer && timer.at <= end; timer = this.next()) {
      this.timers.delete(timer.id);
      this.now = timer.at;
      timer.fn();
    }
    this.now = end;
  }
}

// A value from the page's realm as a value of this one (deepStrictEqual
// compares prototypes, and each realm has its own Object.prototype).
function plain(value) {
  return value === undefined ? undefined : JSON.parse(JSON.stringify(value));
}

function text(args) {
  return args.map((a) => (a instanceof Error || (a && a.stack) ? String(a.stack || a) : String(a))).join(" ");
}

/**
 * Load the client into a fresh page.
 *
 * options.config: window.SERVERPUSH_CONFIG (JSON), default: one channel "news" at since 1000;
 *   null: none.
 * options.webSocket: "works" (default), "throws" (the constructor throws, as when blocked),
 *   or "absent".
 * options.random: a function standing in for Math.random (default 0.5).
 * options.jquery: true to put a minimal jQuery on the page.
 */
function load(options = {}) {
  const clock = new Clock();
  const env = {
    clock,
    sockets: [],
    requests: [],
    logs: [],
    uncaught: [],
    reloads: 0,
    random: options.random || (() => 0.5),
  };

  const consoleFake = {};
  for (const level of ["log", "info", "warn", "error", "debug"]) {
    consoleFake[level] = (...args) => env.logs.push({level, text: text(args)});
  }

  const listeners = new Map();
  const document = {
    addEventListener(type, fn) {
      if (!listeners.has(type)) listeners.set(type, []);
      listeners.get(type).push(fn);
    },
    removeEventListener(type, fn) {
      const list = listeners.get(type) || [];
      const i = list.indexOf(fn);
      if (i >= 0) list.splice(i, 1);
    },
    // As browsers do: a listener that throws is reported, the others still run.
    dispatchEvent(event) {
      for (const fn of (listeners.get(event.type) || []).slice()) {
        try {
          fn.call(document, event);
        } catch (e) {
          env.uncaught.push(e);
        }
      }
      return !event.defaultPrevented;
    },
  };

  class CustomEvent {
    constructor(type, init = {}) {
      this.type = type;
      this.detail = init.detail === undefined ? null : init.detail;
      this.cancelable = !!init.cancelable;
      this.defaultPrevented = false;
    }

    preventDefault() {
      if (this.cancelable) this.defaultPrevented = true;
    }
  }

  class WebSocket {
    constructor(url) {
      if (options.webSocket === "throws") {
        env.blockedSockets = (env.blockedSockets || 0) + 1;
        throw new Error("blocked");
      }
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      env.sockets.push(this);
    }

    send(data) {
      if (this.readyState === 0) throw new Error("InvalidStateError: still CONNECTING");
      if (this.readyState === 1) this.sent.push(JSON.parse(data));
    }

    close() {
      this.readyState = 3;
    }

    // The server's side.
    accept() {
      this.readyState = 1;
      if (this.onopen) this.onopen({type: "open"});
    }

    refuse() {
      this.readyState = 3;
      if (this.onclose) this.onclose({type: "close", code: 1006});
    }

    deliver(...messages) {
      for (const message of messages) {
        if (this.onmessage) this.onmessage({data: JSON.stringify(message)});
      }
    }

    drop(code = 1006) {
      this.readyState = 3;
      if (this.onclose) this.onclose({type: "close", code});
    }
  }

  class XMLHttpRequest {
    constructor() {
      this.headers = {};
      this.aborted = false;
      this.answered = false;
      this.status = 0;
      this.responseText = "";
    }

    open(method, url) {
      this.method = method;
      this.url = url;
    }

    setRequestHeader(name, value) {
      this.headers[name] = value;
    }

    send(body) {
      this.body = JSON.parse(body);
      env.requests.push(this);
    }

    abort() {
      this.aborted = true;
    }

    // The server's side.
    respond(status, body) {
      if (this.aborted || this.answered) throw new Error("answering a request that is over");
      this.answered = true;
      this.status = status;
      this.responseText = typeof body === "string" ? body : JSON.stringify(body);
      if (this.onload) this.onload({type: "load"});
    }

    fail() {
      if (this.aborted || this.answered) throw new Error("failing a request that is over");
      this.answered = true;
      if (this.onerror) this.onerror({type: "error"});
    }

    // No answer within the request's own `timeout` (as the browser enforces it).
    timeOut() {
      if (this.aborted || this.answered || !(this.timeout > 0)) throw new Error("this request cannot time out");
      this.answered = true;
      if (this.ontimeout) this.ontimeout({type: "timeout"});
    }

    get channels() {
      return this.body.subscriptions.map((s) => s.channel);
    }

    since(channel) {
      const sub = this.body.subscriptions.find((s) => s.channel === channel);
      if (!sub) throw new Error(`${channel} is not in this poll`);
      return sub.since;
    }
  }

  const location = {
    protocol: "http:",
    hostname: "page.test",
    reload() {
      env.reloads += 1;
    },
  };

  const sandbox = {
    console: consoleFake,
    document,
    location,
    CustomEvent,
    XMLHttpRequest,
    setTimeout: (fn, delay) => clock.setTimeout(fn, delay),
    clearTimeout: (id) => clock.clearTimeout(id),
  };
  if (options.webSocket !== "absent") sandbox.WebSocket = WebSocket;
  sandbox.window = sandbox;
  const context = vm.createContext(sandbox);
  vm.runInContext("Math", context).random = () => env.random();
  const config = options.config === undefined
    ? {url: URL, since: 1000, subscriptions: [{channel: "news", token: null}]}
    : options.config;
  if (config !== null) {
    sandbox.SERVERPUSH_CONFIG = vm.runInContext(`JSON.parse(${JSON.stringify(JSON.stringify(config))})`, context);
  }
  if (options.jquery) sandbox.jQuery = fakeJQuery(document);
  vm.runInContext(SOURCE, context, {filename: CLIENT});

  Object.assign(env, {
    window: sandbox,
    document,
    ServerPush: sandbox.ServerPush,
    // Page code, run in the page's realm.
    run: (code) => vm.runInContext(code, context),
    advance: (ms) => clock.advance(ms),
    socket: () => env.sockets[env.sockets.length - 1],
    // The request in flight (not aborted, not answered); fails if none or several.
    poll() {
      const open = env.requests.filter((r) => !r.aborted && !r.answered);
      if (open.length !== 1) throw new Error(`${open.length} polls in flight`);
      return open[0];
    },
    polls: () => env.requests.filter((r) => !r.aborted && !r.answered),
    // Run timers one at a time until `done()`; the time it took, as the page saw it.
    waitFor(done, limit = 120000) {
      const start = clock.now;
      while (!done()) {
        const timer = clock.next();
        if (!timer || timer.at - start > limit) throw new Error(`nothing happened within ${limit} ms`);
        clock.advance(timer.at - clock.now);
      }
      return clock.now - start;
    },
    // Details of the events of one type fired from now on.
    record(type, {prevent = false} = {}) {
      const seen = [];
      document.addEventListener(type, (event) => {
        seen.push(plain(event.detail));
        if (prevent) event.preventDefault();
      });
      return seen;
    },
    errors: () => env.logs.filter((l) => l.level === "error"),
  });
  return env;
}

// Just enough jQuery for the client: $(document).bind/trigger, $.Event. As in
// jQuery, an exception in a handler goes up to the trigger() caller.
function fakeJQuery(document) {
  const handlers = new Map();
  function jq(target) {
    return {
      bind(type, fn) {
        if (!handlers.has(type)) handlers.set(type, []);
        handlers.get(type).push(fn);
        return this;
      },
      trigger(event, args) {
        for (const fn of handlers.get(event.type) || []) {
          fn.call(target, event, ...(args || []));
        }
        return this;
      },
    };
  }
  jq.fn = {trigger() {}};
  jq.event = {triggered: undefined};
  jq.Event = (type) => {
    let prevented = false;
    return {type, preventDefault: () => { prevented = true; }, isDefaultPrevented: () => prevented};
  };
  return jq;
}

// Server messages.
const update = (channel, ts, data, name = null) => ({type: "update", channel, ts, name, data});
const subscribed = (channel, ts) => ({type: "subscribed", channel, ts});
const reset = (channel, ts) => ({type: "reset", channel, ts});
const error = (channel, code, message = code) => ({type: "error", channel, code, message});

module.exports = {load, plain, URL, ROOT, CLIENT, update, subscribed, reset, error};
