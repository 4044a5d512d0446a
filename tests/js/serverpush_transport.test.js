"use strict";
// Review of the transports and the state the page sees:
//   1. back to WebSocket after a fallback to long-poll;
//   2. "longpoll" only once a poll is answered;
//   3. the serverpush_state event.

const fs = require("node:fs");
const path = require("node:path");
const test = require("node:test");
const assert = require("node:assert/strict");
const {load, plain, URL, ROOT, CLIENT, update, subscribed} = require("./fake_browser.js");

const NEWS = {url: URL, since: 1000, subscriptions: [{channel: "news", token: null}]};

// Connected over WebSocket, then the push server restarts: the socket drops
// and the two reconnections are refused, so the client falls back to long-poll.
function fellBack(options = {}) {
  return fallBack(load(options));
}

function fallBack(env) {
  env.advance(0);
  env.socket().accept();
  env.socket().drop();
  env.waitFor(() => env.sockets.length === 2);
  env.socket().refuse();
  env.waitFor(() => env.sockets.length === 3);
  env.socket().refuse();
  assert.equal(env.polls().length, 1);
  return env;
}

// 1. Stuck on long-poll.

test("review 1: after a fallback to long-poll, WebSocket is tried again after 30 s and replaces polling, nothing lost or repeated", () => {
  const env = fellBack();
  const got = [];
  const events = env.record("serverpush_tick");
  env.ServerPush.subscribe("news", (data) => got.push(data));
  const fellBackAt = env.clock.now;
  env.poll().respond(200, {messages: [update("news", 1001, 1, "tick")], ts: 1001});
  assert.equal(env.ServerPush.state, "longpoll");
  const sockets = env.sockets.length;
  env.waitFor(() => env.sockets.length > sockets);
  assert.equal(env.clock.now - fellBackAt, 30000);
  const probe = env.socket();
  assert.equal(probe.url, "ws://push.test:8013/ws");
  // Meanwhile long-poll goes on and the page stays live.
  assert.equal(env.ServerPush.state, "longpoll");
  env.poll().respond(200, {messages: [update("news", 1002, 2, "tick")], ts: 1002});
  const lastPoll = env.poll();
  assert.equal(lastPoll.since("news"), 1002);
  probe.accept();
  // Polling stopped before the socket subscribed, from the last update seen.
  assert.ok(lastPoll.aborted);
  assert.equal(env.polls().length, 0);
  assert.equal(env.ServerPush.state, "websocket");
  assert.deepEqual(probe.sent, [{type: "subscribe", channel: "news", since: 1002, token: null}]);
  const requests = env.requests.length;
  // The server replays from there; an overlap with what the polls brought is dropped.
  probe.deliver(update("news", 1001, 1, "tick"), update("news", 1002, 2, "tick"), subscribed("news", 1002),
                update("news", 1003, 3, "tick"));
  assert.deepEqual(got, [1, 2, 3]);
  assert.deepEqual(events, [1, 2, 3]);
  env.advance(10 * 60 * 1000);
  assert.equal(env.requests.length, requests);  // no poll after the switch
  assert.equal(env.socket(), probe);     // nor another socket
  assert.equal(env.ServerPush.state, "websocket");
});

test("review 1: WebSocket tries while on long-poll come after 30 s, then intervals doubling up to 5 min", () => {
  const env = fellBack();
  env.poll().respond(200, {messages: [], ts: 1000});
  const delays = [];
  for (let i = 0; i < 7; i++) {
    const before = env.sockets.length;
    delays.push(env.waitFor(() => env.sockets.length > before, 10 * 60 * 1000));
    if (i === 3) {
      // A proxy that swallows the handshake: given up after 10 s, counted as failed.
      env.advance(10000);
      assert.equal(env.socket().readyState, 3);
      delays[i] += 10000;
    } else {
      env.socket().refuse();
    }
    assert.equal(env.ServerPush.state, "longpoll");  // live all along
    assert.equal(env.polls().length, 1);
  }
  assert.deepEqual(delays, [30000, 60000, 120000, 240000 + 10000, 300000, 300000, 300000]);
  // Once WebSocket works again, a later fallback starts over from 30 s.
  const before = env.sockets.length;
  env.waitFor(() => env.sockets.length > before, 10 * 60 * 1000);
  env.socket().accept();
  assert.equal(env.ServerPush.state, "websocket");
  env.socket().drop();
  env.waitFor(() => env.sockets.length === before + 2);
  env.socket().refuse();
  env.waitFor(() => env.sockets.length === before + 3);
  env.socket().refuse();
  env.poll().respond(200, {messages: [], ts: 1000});
  assert.equal(env.waitFor(() => env.sockets.length === before + 4), 30000);
});

test("review 1: while the server is down, WebSocket is tried again only once a poll is answered", () => {
  const env = fellBack();
  const got = [];
  env.ServerPush.subscribe("news", (data) => got.push(data));
  const sockets = env.sockets.length;
  // Polls fail for longer than the first interval: no WebSocket try meanwhile.
  const start = env.clock.now;
  while (env.clock.now - start < 60000) {
    const before = env.requests.length;
    env.poll().fail();
    env.waitFor(() => env.requests.length > before);
  }
  assert.equal(env.sockets.length, sockets);
  assert.equal(env.ServerPush.state, "connecting");
  env.poll().respond(200, {messages: [update("news", 1001, "a")], ts: 1001});
  assert.equal(env.sockets.length, sockets + 1);  // the server is back: try at once
  const probe = env.socket();
  // The next poll fails while the socket opens: a poll retry is planned...
  env.poll().fail();
  assert.equal(env.ServerPush.state, "waiting");
  probe.accept();
  // ...and dropped: the socket took over.
  assert.equal(env.ServerPush.state, "websocket");
  const requests = env.requests.length;
  env.advance(10 * 60 * 1000);
  assert.equal(env.requests.length, requests);
  assert.deepEqual(probe.sent, [{type: "subscribe", channel: "news", since: 1001, token: null}]);
  assert.deepEqual(got, ["a"]);
});

test("review 1: long-poll chosen by the page, or a browser without WebSocket, never tries WebSocket", () => {
  const chosen = load({config: {...NEWS, transports: ["longpoll"]}});
  chosen.advance(0);
  const absent = load({webSocket: "absent"});
  absent.advance(0);
  for (const env of [chosen, absent]) {
    for (let i = 0; i < 20; i++) {
      env.poll().respond(200, {messages: [], ts: 1000});
      env.advance(60000);
    }
    assert.equal(env.sockets.length, 0);
    assert.equal(env.ServerPush.state, "longpoll");
  }
});

// 2. "longpoll" read as live before any poll was answered.

test("review 2: state reads longpoll only once a poll is answered; connecting or waiting before and after failures", () => {
  const env = load({config: {...NEWS, transports: ["longpoll"]}});
  assert.equal(env.ServerPush.state, "connecting");
  env.advance(0);
  assert.equal(env.polls().length, 1);
  assert.equal(env.ServerPush.state, "connecting");  // sent, not answered
  const failures = [(r) => r.fail(), (r) => r.timeOut(), (r) => r.respond(502, "Bad Gateway")];
  for (const failure of failures) {
    const before = env.requests.length;
    failure(env.poll());
    assert.equal(env.ServerPush.state, "waiting");
    env.waitFor(() => env.requests.length > before);
    assert.equal(env.ServerPush.state, "connecting");
  }
  env.poll().respond(200, {messages: [], ts: 1500});
  assert.equal(env.ServerPush.state, "longpoll");
  assert.equal(env.poll().since("news"), 1500);
  assert.equal(env.ServerPush.state, "longpoll");  // the next poll of a server that answers
  env.poll().fail();
  assert.equal(env.ServerPush.state, "waiting");
  env.waitFor(() => env.polls().length === 1);
  assert.equal(env.ServerPush.state, "connecting");

  // The same after a fallback from WebSocket.
  const fell = load();
  fell.advance(0);
  fell.socket().refuse();
  fell.waitFor(() => fell.sockets.length === 2);
  fell.socket().refuse();
  assert.equal(fell.polls().length, 1);
  assert.equal(fell.ServerPush.state, "connecting");
  fell.poll().respond(200, {messages: [], ts: 1000});
  assert.equal(fell.ServerPush.state, "longpoll");
});

// 3. No state-change event.

test("review 3: serverpush_state fires on document and with jQuery on every change, detail {state, previous}", () => {
  const env = load({config: {...NEWS, subscriptions: []}, jquery: true});
  const seen = env.record("serverpush_state");
  const current = [];
  env.document.addEventListener("serverpush_state", (e) => current.push(env.ServerPush.state === e.detail.state));
  const jq = [];
  env.window.jQuery(env.document).bind("serverpush_state", (event, detail) => jq.push(plain(detail)));
  env.ServerPush.subscribe("news");
  fallBack(env);  // falls back: still connecting until a poll is answered
  env.poll().respond(200, {messages: [], ts: 1000});
  env.poll().respond(200, {messages: [], ts: 1000});  // no change, no event
  env.ServerPush.unsubscribe("news");
  const expected = [
    {state: "connecting", previous: "idle"},
    {state: "websocket", previous: "connecting"},
    {state: "waiting", previous: "websocket"},
    {state: "connecting", previous: "waiting"},
    {state: "waiting", previous: "connecting"},
    {state: "connecting", previous: "waiting"},
    {state: "longpoll", previous: "connecting"},
    {state: "idle", previous: "longpoll"},
  ];
  assert.deepEqual(seen, expected);
  assert.deepEqual(jq, expected);
  assert.ok(current.every(Boolean));  // ServerPush.state already reads the new state

  // Documented with the client and in docs/django.md section 4.
  const client = fs.readFileSync(CLIENT, "utf8");
  const header = client.slice(0, client.indexOf("*/"));
  const django = fs.readFileSync(path.join(ROOT, "docs", "django.md"), "utf8");
  const section = django.slice(django.indexOf("## 4. The browser client"), django.indexOf("## 5."));
  for (const text of [header, section]) {
    assert.ok(text.includes("serverpush_state"));
  }
});

test("review 3: a serverpush_state listener that throws, or that unsubscribes, does not break the client", () => {
  const env = load({config: {...NEWS, transports: ["longpoll"]}});
  env.document.addEventListener("serverpush_state", () => { throw new Error("state bug"); });
  env.advance(0);
  env.poll().respond(200, {messages: [update("news", 1001, "x")], ts: 1001});
  assert.equal(env.ServerPush.state, "longpoll");
  assert.equal(env.poll().since("news"), 1001);

  const page = load({config: {...NEWS, transports: ["longpoll"]}});
  page.document.addEventListener("serverpush_state", (e) => {
    if (e.detail.state === "longpoll") page.ServerPush.unsubscribe("news");
  });
  page.advance(0);
  page.poll().respond(200, {messages: [], ts: 1001});
  assert.equal(page.polls().length, 0);
  assert.equal(page.ServerPush.state, "idle");
});
