"use strict";
// django-pushserver pages on serverpush.js: `$.updates.subscribe({name: url})` with the
// URLs `{% channel_url %}` renders, and processors registered under the name.
// Run with `node --test tests/js/`.

const test = require("node:test");
const assert = require("node:assert/strict");
const {load, plain, update} = require("./fake_browser.js");

const RELAY_URL = "http://relay.test:8000/updates/room:1?token=1700000000.sig-_A";

test("{name: channel URL} follows the channel, from the URL's server, with its token", () => {
  const env = load({config: null, jquery: true});
  const answers = [];
  env.run(`jQuery.updates.subscribe({main: ${JSON.stringify(RELAY_URL)}});`);
  env.window.jQuery.updates.registerProcessor("main", "answer", (data) => answers.push(plain(data)));
  env.advance(0);
  assert.equal(env.socket().url, "ws://relay.test:8000/ws");
  env.socket().accept();
  assert.deepEqual(env.socket().sent, [
    {type: "subscribe", channel: "room:1", since: null, token: "1700000000.sig-_A"}]);
  env.socket().deliver(update("room:1", 1001, {type: "answer", value: 42}),
                       update("room:1", 1002, {type: "other"}));
  assert.deepEqual(answers, [{type: "answer", value: 42}]);
});

test("processors registered before the subscription, by name or by channel, all run", () => {
  const env = load({config: null});
  const got = [];
  env.ServerPush.updates.registerProcessor("main", "answer", () => got.push("by name"));
  env.ServerPush.updates.registerProcessor("room:1", "answer", () => got.push("by channel"));
  env.ServerPush.updates.subscribe({main: RELAY_URL, again: RELAY_URL});
  env.advance(0);
  env.socket().accept();
  assert.equal(env.socket().sent.length, 1);  // one channel, however many names
  env.socket().deliver(update("room:1", 1001, {type: "answer"}));
  assert.deepEqual(got, ["by channel", "by name"]);
});

test("a configured push server wins; a relative channel URL names only the channel", () => {
  const env = load();  // SERVERPUSH_CONFIG: url http://push.test:8013
  env.ServerPush.updates.subscribe({main: "/updates/news%2Fworld"});
  env.advance(0);
  assert.equal(env.socket().url, "ws://push.test:8013/ws");
  env.socket().accept();
  assert.deepEqual(env.socket().sent.map((m) => [m.channel, m.token]),
                   [["news", null], ["news/world", null]]);
});

test("{channel: token} still means a token (a token never holds /updates/)", () => {
  const env = load({config: null});
  env.ServerPush.configure({url: "http://push.test:8013"});
  env.ServerPush.updates.subscribe({"room:2": "1700000000.sig"});
  env.advance(0);
  env.socket().accept();
  assert.deepEqual(env.socket().sent, [
    {type: "subscribe", channel: "room:2", since: null, token: "1700000000.sig"}]);
});

test("a channel URL that cannot be read is reported and skipped", () => {
  const env = load({config: null});
  env.ServerPush.configure({url: "http://push.test:8013"});
  env.ServerPush.updates.subscribe({bad: "http://x/updates/%E0%A4%A", good: RELAY_URL});
  env.advance(0);
  env.socket().accept();
  assert.deepEqual(env.socket().sent.map((m) => m.channel), ["room:1"]);
  assert.match(env.errors()[0].text, /channel URL of bad/);
});
