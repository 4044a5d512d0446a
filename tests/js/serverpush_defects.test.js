"use strict";
// Defects of the browser client, each held by the tests named after it.

const fs = require("node:fs");
const path = require("node:path");
const test = require("node:test");
const assert = require("node:assert/strict");
const {load, plain, URL, ROOT, CLIENT, update, subscribed, error} = require("./fake_browser.js");

function config(channels, extra = {}) {
  return {url: URL, since: 1000, ...extra,
          subscriptions: channels.map((c) => (typeof c === "string" ? {channel: c, token: null} : c))};
}

function connected(options) {
  const env = load(options);
  env.advance(0);
  env.socket().accept();
  return env;
}

function longPolling(channels = ["news"], options = {}) {
  const env = load({...options, config: config(channels, {transports: ["longpoll"]})});
  env.advance(0);
  return env;
}

// 1. Long-poll error answers were re-polled at once, forever.

test("defect 1: long-poll: a refused channel is reported and left out of the polls, no tight loop", () => {
  const env = longPolling(["news", {channel: "secret", token: "bad"}]);
  const errors = env.record("serverpush_error");
  env.poll().respond(200, {messages: [error("secret", "forbidden", "bad token")], ts: 2000});
  assert.deepEqual(env.poll().channels, ["news"]);
  assert.equal(env.poll().since("news"), 2000);
  assert.deepEqual(errors, [{channel: "secret", code: "forbidden", message: "bad token"}]);
  assert.ok(env.errors().some((l) => l.text.includes("secret") && l.text.includes("forbidden")));

  for (const code of ["forbidden", "bad_channel"]) {
    const alone = longPolling([{channel: "secret", token: "bad"}]);
    alone.poll().respond(200, {messages: [error("secret", code)], ts: 2000});
    alone.advance(10 * 60 * 1000);
    assert.equal(alone.requests.length, 1, code);  // not asked again: it would be refused again
    assert.equal(alone.ServerPush.state, "idle");
  }
});

test("defect 1: long-poll: an unavailable channel is retried with growing, jittered delays from its own position", () => {
  const env = longPolling(["news"]);
  const errors = env.record("serverpush_error");
  const delays = [];
  for (let i = 0; i < 3; i++) {
    const before = env.requests.length;
    env.poll().respond(200, {messages: [error("news", "unavailable")], ts: 5000});
    assert.equal(env.polls().length, 0);  // not at once
    assert.equal(env.ServerPush.state, "waiting");
    delays.push(env.waitFor(() => env.requests.length > before));
    assert.equal(env.poll().since("news"), 1000);  // the cursor is not this channel's
  }
  assert.deepEqual(delays, [375, 750, 1500]);
  assert.equal(errors.length, 3);
  assert.deepEqual(errors[0], {channel: "news", code: "unavailable", message: "unavailable"});
  env.poll().respond(200, {messages: [update("news", 1001, "x")], ts: 1001});
  const before = env.requests.length;
  env.poll().respond(200, {messages: [error("news", "unavailable")], ts: 5000});
  assert.equal(env.waitFor(() => env.requests.length > before), 375);  // back to the first delay

  const jittered = longPolling(["news"], {random: () => 0});
  jittered.poll().respond(200, {messages: [error("news", "unavailable")], ts: 5000});
  assert.equal(jittered.waitFor(() => jittered.requests.length === 2), 250);
});

test("defect 1: long-poll: an unavailable channel does not hold up the others", () => {
  const env = longPolling(["news", "sports"]);
  const sports = [];
  env.ServerPush.subscribe("sports", (data) => sports.push(data));
  env.poll().respond(200, {messages: [error("news", "unavailable")], ts: 5000});
  const held = env.poll();
  assert.deepEqual(held.channels, ["sports"]);
  assert.equal(held.since("sports"), 5000);
  env.waitFor(() => held.aborted);
  assert.equal(env.clock.now, 375);
  assert.deepEqual(env.poll().body.subscriptions, [
    {channel: "news", since: 1000, token: null}, {channel: "sports", since: 5000, token: null}]);
  env.poll().respond(200, {messages: [update("sports", 5001, "goal")], ts: 5001});
  assert.deepEqual(sports, ["goal"]);
});

test("defect 1: WebSocket: an unavailable channel is resubscribed after growing, jittered delays", () => {
  const env = connected();
  const socket = env.socket();
  socket.deliver(update("news", 1001, "a"));
  const subscribes = () => socket.sent.filter((m) => m.type === "subscribe").length;
  const delays = [];
  for (let i = 0; i < 3; i++) {
    const before = subscribes();
    socket.deliver(error("news", "unavailable"));
    assert.equal(subscribes(), before);
    delays.push(env.waitFor(() => subscribes() > before));
    assert.deepEqual(socket.sent.at(-1), {type: "subscribe", channel: "news", since: 1001, token: null});
  }
  assert.deepEqual(delays, [375, 750, 1500]);
  socket.deliver(subscribed("news", 9000));
  const before = subscribes();
  socket.deliver(error("news", "unavailable"));
  assert.equal(env.waitFor(() => subscribes() > before), 375);
});

// 2. Once the last channel was unsubscribed, long-poll never polled again.

test("defect 2: long-poll: subscribe() after unsubscribing the last channel polls again", () => {
  const env = longPolling(["news"]);
  const first = env.poll();
  env.ServerPush.unsubscribe("news");
  assert.ok(first.aborted);
  assert.equal(env.polls().length, 0);
  assert.equal(env.ServerPush.state, "idle");
  const got = [];
  env.ServerPush.subscribe("sports", {since: 3000}, (data) => got.push(data));
  assert.deepEqual(env.poll().body.subscriptions, [{channel: "sports", since: 3000, token: null}]);
  assert.equal(env.ServerPush.state, "connecting");  // live once answered
  env.poll().respond(200, {messages: [update("sports", 3001, "kick-off")], ts: 3001});
  assert.equal(env.ServerPush.state, "longpoll");
  assert.deepEqual(got, ["kick-off"]);
  assert.equal(env.poll().since("sports"), 3001);
});

test("defect 2: long-poll: subscribe() after the last channel was refused polls again", () => {
  const env = longPolling([{channel: "secret", token: "old"}]);
  env.poll().respond(200, {messages: [error("secret", "forbidden")], ts: 2000});
  assert.equal(env.polls().length, 0);
  env.ServerPush.subscribe("secret", {token: "fresh"});
  assert.deepEqual(env.poll().body.subscriptions, [{channel: "secret", since: 1000, token: "fresh"}]);
});

// 3. A handler that threw stopped long-polling for good.

function throwingPage(env) {
  const got = [];
  const processed = [];
  const events = env.record("serverpush_headline");
  env.ServerPush.subscribe("news", () => { throw new Error("handler bug"); });
  env.ServerPush.subscribe("news", (data) => got.push(data.n));
  env.ServerPush.registerProcessor("news", "chat", () => { throw new Error("processor bug"); });
  env.ServerPush.registerProcessor("news", "chat", (data) => processed.push(data.n));  // replaces it
  env.ServerPush.registerProcessor("news", "bad", () => { throw new Error("processor bug"); });
  env.window.jQuery(env.document).bind("serverpush_headline", () => { throw new Error("jQuery bug"); });
  return {got, processed, events};
}

test("defect 3: long-poll: throwing handlers, processors and listeners neither stop polling nor delivery", () => {
  const env = longPolling(["news"], {jquery: true});
  const page = throwingPage(env);
  env.poll().respond(200, {messages: [update("news", 1001, {type: "bad", n: 1}, "headline"),
                                      update("news", 1002, {type: "chat", n: 2}, "headline")], ts: 1002});
  assert.deepEqual(page.got, [1, 2]);
  assert.deepEqual(page.processed, [2]);
  assert.deepEqual(page.events, [{type: "bad", n: 1}, {type: "chat", n: 2}]);
  assert.equal(env.poll().since("news"), 1002);  // still polling
  env.poll().respond(200, {messages: [update("news", 1003, {type: "chat", n: 3}, "headline")], ts: 1003});
  assert.deepEqual(page.got, [1, 2, 3]);
  assert.deepEqual(page.processed, [2, 3]);
  assert.equal(env.poll().since("news"), 1003);
  const reported = env.errors().map((l) => l.text).join("\n");
  for (const bug of ["handler bug", "processor bug", "jQuery bug"]) {
    assert.ok(reported.includes(bug), bug);
  }
});

test("defect 3: WebSocket: a throwing handler does not keep the next ones from the update", () => {
  const env = connected({jquery: true});
  const page = throwingPage(env);
  env.socket().deliver(update("news", 1001, {type: "chat", n: 1}, "headline"));
  assert.deepEqual(page.got, [1]);
  assert.deepEqual(page.processed, [1]);
  assert.deepEqual(page.events, [{type: "chat", n: 1}]);
  assert.ok(env.errors().some((l) => l.text.includes("handler bug")));
});

test("defect 3: a throwing reset listener does not stop the reload", () => {
  const env = connected({jquery: true});
  env.window.jQuery(env.document).bind("serverpush_reset", () => { throw new Error("reset bug"); });
  env.socket().deliver({type: "reset", channel: "news", ts: 5000});
  assert.equal(env.reloads, 1);
  assert.ok(env.errors().some((l) => l.text.includes("reset bug")));
});

// 4. Channels and processors were kept in plain objects.

test("defect 4: channels named __proto__, constructor, toString are ordinary and Object.prototype stays clean", () => {
  const env = load({config: config([])});
  const got = [];
  for (const name of ["__proto__", "constructor", "toString", "hasOwnProperty"]) {
    env.ServerPush.subscribe(name, {token: "t"}, (data) => got.push([name, data]));
  }
  env.ServerPush.registerProcessor("__proto__", "chat", (data) => got.push(["processor", data.text]));
  env.ServerPush.registerProcessor("news", "__proto__", (data) => got.push(["odd type", data.text]));
  env.advance(0);
  env.socket().accept();
  env.ServerPush.subscribe("news");
  assert.deepEqual(env.socket().sent.map((m) => [m.channel, m.token]), [
    ["__proto__", "t"], ["constructor", "t"], ["toString", "t"], ["hasOwnProperty", "t"], ["news", null]]);
  env.socket().deliver(update("__proto__", 1001, "p"), update("constructor", 1002, "c"),
                       update("toString", 1003, "s"), update("hasOwnProperty", 1004, "h"),
                       update("__proto__", 1005, {type: "chat", text: "hi"}),
                       update("news", 1006, {type: "__proto__", text: "odd"}),
                       update("news", 1007, {type: "constructor", text: "none"}),
                       update("valueOf", 1008, "not subscribed"));
  assert.deepEqual(plain(got), [
    ["__proto__", "p"], ["constructor", "c"], ["toString", "s"], ["hasOwnProperty", "h"],
    ["__proto__", {type: "chat", text: "hi"}], ["processor", "hi"], ["odd type", "odd"]]);
  assert.equal(env.run("Object.getOwnPropertyNames(Object.prototype).filter(n => " +
                       "!['constructor','__defineGetter__','__defineSetter__','hasOwnProperty'," +
                       "'__lookupGetter__','__lookupSetter__','isPrototypeOf','propertyIsEnumerable'," +
                       "'toString','valueOf','__proto__','toLocaleString'].includes(n)).join()"), "");
  assert.equal(env.run("({}).handlers === undefined && ({}).since === undefined && ({}).chat === undefined"),
               true);
  env.ServerPush.unsubscribe("__proto__");
  assert.deepEqual(env.socket().sent.at(-1), {type: "unsubscribe", channel: "__proto__"});
});

test("defect 4: updates.subscribe({channel: token}) takes own keys only, __proto__ included", () => {
  const env = load({config: config([])});
  env.run(`Object.prototype.inherited = "x";
           ServerPush.updates.subscribe(JSON.parse('{"__proto__": "t1", "room:1": "t2"}'));
           delete Object.prototype.inherited;`);
  env.advance(0);
  env.socket().accept();
  assert.deepEqual(env.socket().sent, [
    {type: "subscribe", channel: "__proto__", since: 1000, token: "t1"},
    {type: "subscribe", channel: "room:1", since: 1000, token: "t2"}]);
});

// 5. States and debug output.

function documentedStates(text) {
  return new Set((text.match(/"(idle|connecting|websocket|longpoll|waiting|[a-z]+)"|`([a-z]+)`/g) || [])
    .map((s) => s.slice(1, -1)));
}

test("defect 5: every state the page can see is documented in the client and in docs/django.md", () => {
  const seen = new Set();
  const env = load({config: config([])});
  const look = () => seen.add(env.ServerPush.state);
  look();  // nothing subscribed
  env.ServerPush.subscribe("news");
  look();
  env.advance(0);
  look();
  env.socket().accept();
  look();
  env.socket().drop();
  look();
  env.waitFor(() => env.sockets.length === 2);
  env.socket().refuse();
  look();
  env.waitFor(() => env.sockets.length === 3);
  env.socket().refuse();
  look();
  env.poll().respond(200, {messages: [], ts: 1000});
  look();
  env.poll().fail();
  look();
  env.waitFor(() => env.polls().length === 1);
  env.ServerPush.unsubscribe("news");
  look();
  assert.deepEqual([...seen].sort(), ["connecting", "idle", "longpoll", "waiting", "websocket"]);

  const client = fs.readFileSync(CLIENT, "utf8");
  const header = client.slice(0, client.indexOf("*/"));
  const django = fs.readFileSync(path.join(ROOT, "docs", "django.md"), "utf8");
  const section = django.slice(django.indexOf("## 4. The browser client"), django.indexOf("## 5."));
  for (const [where, text] of [["serverpush.js header", header], ["docs/django.md section 4", section]]) {
    const listed = documentedStates(text);
    for (const state of seen) {
      assert.ok(listed.has(state), `${state} is not documented in ${where}`);
    }
  }
});

test("defect 5: ServerPush.debug logs attempts, failures with their URL and the fallback to long-poll", () => {
  const env = load({config: {url: "http://wrong.test:9999", since: 1000,
                             subscriptions: [{channel: "news", token: null}]}});
  env.ServerPush.debug = true;
  env.advance(0);
  env.socket().refuse();
  env.waitFor(() => env.sockets.length === 2);
  env.socket().refuse();
  env.poll().fail();
  env.waitFor(() => env.polls().length === 1);
  env.poll().respond(404, "<h1>Not Found</h1>");
  const lines = env.logs.map((l) => l.text);
  const has = (...words) => lines.some((line) => words.every((w) => line.includes(w)));
  assert.ok(has("connecting", "ws://wrong.test:9999/ws"), lines.join("\n"));
  assert.ok(has("failed", "ws://wrong.test:9999/ws"), lines.join("\n"));
  assert.ok(has("long-poll", "falling back", "http://wrong.test:9999/poll"), lines.join("\n"));
  assert.ok(has("failed", "http://wrong.test:9999/poll"), lines.join("\n"));
  assert.ok(has("failed", "http://wrong.test:9999/poll", "HTTP 404"), lines.join("\n"));
  assert.ok(has("next attempt in"), lines.join("\n"));

  const quiet = load({config: {url: "http://wrong.test:9999", since: 1000,
                               subscriptions: [{channel: "news", token: null}]}});
  quiet.advance(0);
  quiet.socket().refuse();
  quiet.waitFor(() => quiet.sockets.length === 2);
  quiet.socket().refuse();
  quiet.poll().fail();
  assert.deepEqual(quiet.logs, []);  // silent unless asked
});

test("defect 5: configure({debug: true}) logs connections, reconnections and resets", () => {
  const env = load();
  env.ServerPush.configure({debug: true});
  assert.equal(env.ServerPush.debug, true);
  env.advance(0);
  env.socket().accept();
  env.socket().deliver({type: "reset", channel: "news", ts: 5000});
  env.socket().drop(1001);
  const lines = env.logs.map((l) => l.text);
  const has = (...words) => lines.some((line) => words.every((w) => line.includes(w)));
  assert.ok(has("connected", "ws://push.test:8013/ws"), lines.join("\n"));
  assert.ok(has("reset", "news"), lines.join("\n"));
  assert.ok(has("closed", "1001"), lines.join("\n"));
  assert.ok(has("next attempt in"), lines.join("\n"));
});

// 6. Contract v2: a `since` ahead of the server is refused with bad_request.

test("defect 6: WebSocket: a since ahead of the server resets the channel and resubscribes from now", () => {
  const env = connected();
  const resets = env.record("serverpush_reset");
  const errors = env.record("serverpush_error");
  const got = [];
  env.ServerPush.subscribe("news", (data) => got.push(data));
  const socket = env.socket();
  const sent = socket.sent.length;
  socket.deliver(error("news", "bad_request", "since 1000 is after the server's current position 900"));
  assert.deepEqual(resets, [{channel: "news", ts: null}]);
  assert.equal(env.reloads, 1);
  assert.deepEqual(socket.sent.slice(sent), [{type: "subscribe", channel: "news", since: null, token: null}]);
  socket.deliver(subscribed("news", 900), update("news", 901, "fresh"));
  assert.deepEqual(got, ["fresh"]);
  assert.deepEqual(errors, []);
});

test("defect 6: a since ahead of the server: a page that prevents the reset keeps itself, no loop", () => {
  const env = connected();
  const resets = env.record("serverpush_reset", {prevent: true});
  const errors = env.record("serverpush_error");
  const socket = env.socket();
  socket.deliver(error("news", "bad_request", "since ahead"));
  assert.equal(env.reloads, 0);
  assert.equal(socket.sent.at(-1).since, null);
  // Refused again though it asked from now: not a position problem. Reported, not retried.
  const sent = socket.sent.length;
  socket.deliver(error("news", "bad_request", "something else"));
  env.advance(10 * 60 * 1000);
  assert.equal(socket.sent.length, sent);
  assert.equal(resets.length, 1);
  assert.deepEqual(errors, [{channel: "news", code: "bad_request", message: "something else"}]);
});

test("defect 6: long-poll: a since ahead of the server resets the channel and polls it from now", () => {
  const env = longPolling(["news", "sports"]);
  const resets = env.record("serverpush_reset");
  env.poll().respond(200, {messages: [error("news", "bad_request", "since ahead")], ts: 900});
  assert.deepEqual(resets, [{channel: "news", ts: null}]);
  assert.equal(env.reloads, 1);
  assert.deepEqual(env.poll().body.subscriptions, [
    {channel: "news", since: null, token: null}, {channel: "sports", since: 1000, token: null}]);
  assert.equal(env.requests.length, 2);
});

test("defect 6: a malformed since from the page is reported, not turned into a reload loop", () => {
  const env = connected({config: config(["news"], {since: "yesterday"})});
  const errors = env.record("serverpush_error");
  env.socket().deliver(error("news", "bad_request", "since must be an integer"));
  assert.equal(env.reloads, 0);
  assert.deepEqual(errors, [{channel: "news", code: "bad_request", message: "since must be an integer"}]);
});

test("defect 6: WebSocket: forbidden and bad_channel are reported once and not resubscribed until asked", () => {
  const env = connected({config: config(["news", {channel: "secret", token: "bad"}, "bad name"])});
  const errors = env.record("serverpush_error");
  const socket = env.socket();
  socket.deliver(error("secret", "forbidden", "token expired"), error("bad name", "bad_channel", "bad name"));
  assert.deepEqual(errors, [
    {channel: "secret", code: "forbidden", message: "token expired"},
    {channel: "bad name", code: "bad_channel", message: "bad name"}]);
  assert.equal(env.errors().length, 2);
  assert.ok(env.errors()[0].text.includes("secret"));
  env.advance(10 * 60 * 1000);
  assert.equal(socket.sent.length, 3);
  socket.drop();
  env.waitFor(() => env.sockets.length === 2);
  env.socket().accept();
  assert.deepEqual(env.socket().sent.map((m) => m.channel), ["news"]);
  env.ServerPush.subscribe("secret", {token: "renewed"});
  assert.deepEqual(env.socket().sent.at(-1), {type: "subscribe", channel: "secret", since: 1000, token: "renewed"});
});
