"use strict";
// The browser client's core behaviours, seen from the page: run with
// `node --test tests/js/` from the repository root.

const test = require("node:test");
const assert = require("node:assert/strict");
const {load, plain, URL, update, subscribed, reset} = require("./fake_browser.js");

const LONGPOLL = {url: URL, since: 1000, transports: ["longpoll"],
                  subscriptions: [{channel: "news", token: null}]};

function connected(options) {
  const env = load(options);
  env.advance(0);
  env.socket().accept();
  return env;
}

function longPolling(config = LONGPOLL, options = {}) {
  const env = load({...options, config});
  env.advance(0);
  return env;
}

function withChannels(...channels) {
  return {url: URL, since: 1000, subscriptions: channels.map((channel) => ({channel, token: null}))};
}

test("connects over WebSocket and subscribes every channel from the page's position", () => {
  const env = load({config: {url: URL + "/", since: 1000, subscriptions: [
    {channel: "news", token: null}, {channel: "room:1", token: "1.sig"}]}});
  assert.equal(env.sockets.length, 0);
  env.advance(0);
  assert.equal(env.socket().url, "ws://push.test:8013/ws");
  assert.equal(env.ServerPush.state, "connecting");
  env.socket().accept();
  assert.equal(env.ServerPush.state, "websocket");
  assert.deepEqual(env.socket().sent, [
    {type: "subscribe", channel: "news", since: 1000, token: null},
    {type: "subscribe", channel: "room:1", since: 1000, token: "1.sig"},
  ]);
});

test("delivers updates to handlers, processors and serverpush_<name> events", () => {
  const env = connected();
  const got = [];
  const processed = [];
  const events = env.record("serverpush_headline");
  env.ServerPush.subscribe("news", (data, message) => got.push([plain(data), message.ts]));
  env.ServerPush.updates.registerProcessor("news", "chat", (data) => processed.push(data.text));
  env.socket().deliver(update("news", 1001, {type: "chat", text: "hi"}, "headline"),
                       update("news", 1002, {type: "other"}));
  assert.deepEqual(got, [[{type: "chat", text: "hi"}, 1001], [{type: "other"}, 1002]]);
  assert.deepEqual(processed, ["hi"]);
  assert.deepEqual(events, [{type: "chat", text: "hi"}]);
});

test("after a drop, reconnects with a delay and resumes each channel from the last ts it saw", () => {
  const env = connected({config: withChannels("news", "sports", "quiet")});
  env.socket().deliver(update("news", 1001, {n: 1}), subscribed("news", 1500),
                       subscribed("sports", 1500), update("news", 1600, {n: 2}));
  env.socket().drop();
  assert.equal(env.ServerPush.state, "waiting");
  const delay = env.waitFor(() => env.sockets.length === 2);
  assert.equal(delay, 375);  // 500 ms halved plus half of it times Math.random() (0.5)
  assert.equal(env.ServerPush.state, "connecting");
  env.socket().accept();
  assert.deepEqual(env.socket().sent, [
    {type: "subscribe", channel: "news", since: 1600, token: null},
    {type: "subscribe", channel: "sports", since: 1500, token: null},
    {type: "subscribe", channel: "quiet", since: 1000, token: null},
  ]);
});

test("reconnection delays have jitter: between half and all of the base delay", () => {
  const delays = [0, 0.999].map((r) => {
    const env = connected({random: () => r});
    env.socket().drop();
    return env.waitFor(() => env.sockets.length === 2);
  });
  assert.equal(delays[0], 250);
  assert.ok(delays[1] > 495 && delays[1] <= 500, String(delays[1]));
});

test("WebSocket reconnection delays grow while it fails and start over after a success", () => {
  const env = connected();
  env.socket().drop();
  assert.equal(env.waitFor(() => env.sockets.length === 2), 375);
  env.socket().refuse();  // server still down
  assert.equal(env.waitFor(() => env.sockets.length === 3), 750);
  env.socket().accept();
  env.socket().drop();
  assert.equal(env.waitFor(() => env.sockets.length === 4), 375);
});

test("long-poll: failed polls back off with growing, jittered delays up to 30 s, reset by an answer", () => {
  const env = longPolling();
  const failures = [
    (r) => r.fail(),
    (r) => r.respond(503, {messages: [{type: "error", channel: null, code: "limit", message: "busy"}], ts: null}),
    (r) => r.respond(400, {messages: [{type: "error", channel: null, code: "bad_request", message: "?"}], ts: null}),
    (r) => r.respond(502, "<html>Bad Gateway</html>"),
    (r) => r.respond(200, "not json"),
    (r) => r.respond(200, {ts: 5}),  // no messages
    (r) => r.timeOut(),  // a network that swallows the request
    (r) => r.fail(),
    (r) => r.fail(),
  ];
  const delays = failures.map((failure) => {
    const before = env.requests.length;
    failure(env.poll());
    assert.equal(env.ServerPush.state, "waiting");
    return env.waitFor(() => env.requests.length > before);
  });
  assert.deepEqual(delays, [375, 750, 1500, 3000, 6000, 12000, 22500, 22500, 22500]);
  env.poll().respond(200, {messages: [], ts: 2000});
  assert.equal(env.poll().since("news"), 2000);  // polled again at once
  const before = env.requests.length;
  env.poll().fail();
  assert.equal(env.waitFor(() => env.requests.length > before), 375);

  const jittered = longPolling(LONGPOLL, {random: () => 0});
  jittered.poll().fail();
  assert.equal(jittered.waitFor(() => jittered.requests.length === 2), 250);
});

test("an update at or below the last ts seen is not delivered twice (WebSocket)", () => {
  const env = connected();
  const got = [];
  const events = env.record("serverpush_tick");
  env.ServerPush.subscribe("news", (data) => got.push(data));
  env.socket().deliver(update("news", 1001, 1, "tick"), update("news", 1002, 2, "tick"));
  env.socket().drop();
  env.waitFor(() => env.sockets.length === 2);
  env.socket().accept();
  assert.equal(env.socket().sent[0].since, 1002);
  // A replay that overlaps what arrived (a server that replays from older than asked).
  env.socket().deliver(update("news", 1001, 1, "tick"), update("news", 1002, 2, "tick"),
                       update("news", 1003, 3, "tick"), update("news", 1003, 3, "tick"));
  assert.deepEqual(got, [1, 2, 3]);
  assert.deepEqual(events, [1, 2, 3]);
  // Nor is anything at or before the page's own position.
  const fresh = connected();
  const seen = [];
  fresh.ServerPush.subscribe("news", (data) => seen.push(data));
  fresh.socket().deliver(update("news", 999, "old"), update("news", 1000, "same"), update("news", 1001, "new"));
  assert.deepEqual(seen, ["new"]);
});

test("long-poll: positions move with updates and the cursor; duplicates are dropped", () => {
  const env = longPolling({...LONGPOLL, subscriptions: [{channel: "news"}, {channel: "sports"}]});
  const got = [];
  env.ServerPush.subscribe("news", (data) => got.push(data));
  const first = env.poll();
  assert.equal(first.method, "POST");
  assert.equal(first.url, URL + "/poll");
  assert.equal(first.headers["Content-Type"], "application/json");
  assert.deepEqual(first.body, {timeout: 25, subscriptions: [
    {channel: "news", since: 1000, token: null}, {channel: "sports", since: 1000, token: null}]});
  first.respond(200, {messages: [update("news", 1001, "a"), update("news", 1002, "b")], ts: 1500});
  const second = env.poll();
  assert.equal(second.since("news"), 1002);  // from its last update
  assert.equal(second.since("sports"), 1500);  // from the cursor
  second.respond(200, {messages: [update("news", 1002, "b"), update("news", 1003, "c")], ts: 1600});
  assert.deepEqual(got, ["a", "b", "c"]);
  assert.equal(env.ServerPush.state, "longpoll");
});

test("falls back to long-poll when WebSocket cannot connect twice", () => {
  const env = load();
  const got = [];
  env.ServerPush.subscribe("news", (data) => got.push(data));
  env.advance(0);
  env.socket().refuse();
  assert.equal(env.requests.length, 0);
  env.waitFor(() => env.sockets.length === 2);
  env.socket().refuse();
  assert.equal(env.ServerPush.state, "connecting");  // live once a poll is answered
  assert.equal(env.sockets.length, 2);
  assert.deepEqual(env.poll().body.subscriptions, [{channel: "news", since: 1000, token: null}]);
  env.poll().respond(200, {messages: [update("news", 1001, "live")], ts: 1001});
  assert.equal(env.ServerPush.state, "longpoll");
  assert.deepEqual(got, ["live"]);
  assert.equal(env.poll().since("news"), 1001);
});

test("falls back to long-poll when the WebSocket constructor throws, or there is none", () => {
  const blocked = load({webSocket: "throws"});
  blocked.advance(0);
  assert.equal(blocked.requests.length, 0);
  blocked.waitFor(() => blocked.requests.length === 1);
  assert.equal(blocked.blockedSockets, 2);
  assert.equal(blocked.ServerPush.state, "connecting");
  assert.equal(blocked.poll().url, URL + "/poll");
  blocked.poll().respond(200, {messages: [], ts: 1000});
  assert.equal(blocked.ServerPush.state, "longpoll");

  const old = load({webSocket: "absent"});
  old.advance(0);
  assert.equal(old.ServerPush.state, "connecting");
  assert.equal(old.poll().since("news"), 1000);
  old.poll().respond(200, {messages: [], ts: 1000});
  assert.equal(old.ServerPush.state, "longpoll");
});

test("reset: serverpush_reset fires and the page reloads", () => {
  const env = connected();
  const resets = env.record("serverpush_reset");
  env.socket().deliver(reset("news", 5000), subscribed("news", 5000));
  assert.deepEqual(resets, [{channel: "news", ts: 5000}]);
  assert.equal(env.reloads, 1);
});

test("reset: a page that prevents the default keeps itself and goes on from the reset", () => {
  const env = connected();
  const resets = env.record("serverpush_reset", {prevent: true});
  const got = [];
  env.ServerPush.subscribe("news", (data) => got.push(data));
  env.socket().deliver(reset("news", 5000), subscribed("news", 5000), update("news", 5001, "after"));
  assert.deepEqual(resets, [{channel: "news", ts: 5000}]);
  assert.equal(env.reloads, 0);
  assert.deepEqual(got, ["after"]);
  env.socket().drop();
  env.waitFor(() => env.sockets.length === 2);
  env.socket().accept();
  assert.equal(env.socket().sent[0].since, 5001);

  const polling = longPolling();
  polling.record("serverpush_reset", {prevent: true});
  polling.poll().respond(200, {messages: [reset("news", 7000)], ts: 7000});
  assert.equal(polling.reloads, 0);
  assert.equal(polling.poll().since("news"), 7000);
});

test("jQuery: bound handlers get the data once, and the reset can be prevented there", () => {
  const env = connected({jquery: true});
  const seen = [];
  env.window.jQuery(env.document).bind("serverpush_tick", (event, data) => seen.push(data));
  env.window.jQuery(env.document).bind("serverpush_reset", (event) => event.preventDefault());
  env.socket().deliver(update("news", 1001, 7, "tick"), reset("news", 2000));
  assert.deepEqual(seen, [7]);
  assert.equal(env.reloads, 0);
});

test("unsubscribe over WebSocket tells the server and stops delivery", () => {
  const env = connected();
  const got = [];
  env.ServerPush.subscribe("news", (data) => got.push(data));
  env.ServerPush.unsubscribe("news");
  assert.deepEqual(env.socket().sent.at(-1), {type: "unsubscribe", channel: "news"});
  env.socket().deliver(update("news", 1001, "late"));
  assert.deepEqual(got, []);
});
