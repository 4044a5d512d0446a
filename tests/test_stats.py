"""The operator's /stats: rates, snapshot, key and page, and its WebSocket feed over
iosim, all on a Clock (the browser test is tests/test_stats_browser.py)."""

from __future__ import annotations

import json
import re

import pytest
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.test.iosim import connectedServerAndClient
from twisted.web.test.requesthelper import DummyRequest

from tests.helpers import START, Recorder, make_clock, make_hub
from tests.test_tap import parse
from tests.test_websocket import Client
from twistedpush import stats
from twistedpush.errors import Forbidden, Unauthorized
from twistedpush.limits import Admission
from twistedpush.web import make_site

KEY = "k" * 20


def publish(hub, channel, count=1):
    out = []
    hub.publish([(channel, None, "1")] * count).addCallback(out.append)
    assert out, "the memory store publishes at once"


# Rates


def test_rates_are_per_second_differences_between_samples():
    recorder = stats.Recorder()
    for second, published in enumerate([0, 5, 5, 12]):
        recorder.add(START + second, (published, published * 3, 0))
    rates = recorder.rates()
    assert rates["publish"]["per_second"] == [5.0, 0.0, 7.0]
    assert rates["deliver"]["per_second"] == [15.0, 0.0, 21.0]
    assert rates["publish"]["last_minute"] == 4.0  # 12 in 3 s
    assert rates["drops"]["per_second"] == [0.0, 0.0, 0.0]


def test_a_late_sample_spreads_over_the_time_it_covers():
    recorder = stats.Recorder()
    recorder.add(START, (0, 0, 0))
    recorder.add(START + 4, (20, 0, 0))  # the reactor was busy for 4 s
    assert recorder.rates()["publish"]["per_second"] == [5.0]


def test_a_clock_stepping_back_is_not_a_rate():
    recorder = stats.Recorder()
    recorder.add(START, (0, 0, 0))
    recorder.add(START - 30, (100, 0, 0))
    recorder.add(START + 1, (3, 0, 0))
    assert recorder.rates()["publish"]["per_second"] == [3.0]


def test_the_minute_ring_keeps_sixty_seconds_and_the_ten_second_ring_ten_minutes():
    recorder = stats.Recorder()
    for second in range(0, 1200):
        recorder.add(START + second, (second * 2, 0, 0))
    rates = recorder.rates()["publish"]
    assert rates["per_second"] == [2.0] * 60
    assert rates["per_10s"] == [2.0] * 60
    assert rates["last_minute"] == rates["last_10_minutes"] == 2.0


def test_no_samples_yet_gives_empty_rates():
    rates = stats.Recorder().rates()
    assert rates["publish"] == {
        "per_second": [],
        "per_10s": [],
        "last_minute": 0.0,
        "last_10_minutes": 0.0,
    }


# Busiest channels and connections by kind


def test_busiest_channels_most_subscribers_first_ties_by_name():
    hub = make_hub()
    for channel, count in (("a", 1), ("b", 3), ("c", 3), ("d", 2)):
        for _ in range(count):
            hub.subscribe(Recorder(), channel)
    assert hub.busiest(3) == [("b", 3), ("c", 3), ("d", 2)]
    assert hub.busiest(10)[-1] == ("a", 1)


class Holder:
    def __init__(self, **attributes):
        self.__dict__.update(attributes)


def test_connections_by_kind_tell_wamp_and_relay_apart():
    admission = stats.TrackedAdmission()
    kinds = [
        ("websocket", Holder(wamp=None)),
        ("websocket", Holder(wamp=object())),
        ("longpoll", Holder(path=b"/poll")),
        ("longpoll", Holder(path=b"/updates/room")),
        ("sse", Holder()),
        ("http", None),
    ]
    tickets = []
    for transport, holder in kinds:
        ticket = admission.accept("192.0.2.1")
        admission.use(ticket, transport, holder)
        tickets.append(ticket)
    counts = stats.connection_counts(admission.tickets)
    assert counts == {
        "websocket": 1, "wamp": 1, "longpoll": 1, "relay": 1, "sse": 1, "http": 1, "stats": 0
    }  # fmt: skip
    for ticket in tickets:
        admission.close(ticket)
    assert admission.tickets == set()
    assert sum(stats.connection_counts(admission.tickets).values()) == 0


# The feed, ticking on a Clock


@pytest.fixture
def node():
    clock = make_clock()
    hub = make_hub(clock)
    site = make_site(hub, clock, stats_key=KEY)
    service = stats.ticker(site.stats, clock)
    service.startService()
    yield clock, hub, site
    service.stopService()


def test_snapshot_shows_rates_busiest_and_totals(node):
    clock, hub, site = node
    for _ in range(3):
        hub.subscribe(Recorder(), "room")
    hub.subscribe(Recorder(), "lobby")
    for second in range(5):
        publish(hub, "room", count=second)
        clock.advance(1)
    snap = site.stats.current()
    assert snap["busiest"] == [
        {"channel": "room", "subscribers": 3},
        {"channel": "lobby", "subscribers": 1},
    ]
    assert snap["rates"]["publish"]["per_second"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert snap["rates"]["deliver"]["per_second"] == [0.0, 3.0, 6.0, 9.0, 12.0]
    assert snap["totals"] == {"publish": 10, "deliver": 30, "drops": 0, "publish_errors": 0}
    assert snap["subscriptions"] == 4 and snap["channels"] == 2
    assert snap["status"] == "ok" and snap["store"] == "memory" and snap["shards"] == []
    assert snap["time"] == "2023-11-14T22:13:25Z"
    json.dumps(snap)


class CountingSource:
    """A node's Status that counts what the feed asks of it."""

    def __init__(self, status):
        self.status = status
        self.reports = self.samples = 0

    def report(self):
        self.reports += 1
        return self.status.report()

    def counters(self):
        self.samples += 1
        return self.status.counters()


class Page:
    def __init__(self):
        self.received = []

    def push(self, message):
        self.received.append(json.loads(message))


def test_without_a_page_the_feed_samples_counters_and_builds_nothing(node):
    clock, hub, site = node
    feed = site.stats
    source = feed.source = CountingSource(feed.source)
    hub.subscribe(Recorder(), "room")
    for _ in range(5):
        publish(hub, "room", count=2)
        clock.advance(1)
    assert (source.samples, source.reports) == (5, 0)  # no /health report a second
    page = Page()
    feed.viewers.add(page)
    clock.advance(1)
    assert (source.samples, source.reports) == (6, 1)
    [snap] = page.received
    assert snap["rates"]["publish"]["per_second"] == [2.0] * 5 + [0.0]
    assert snap["totals"]["publish"] == 10


def test_snapshot_names_redis_shards_as_health_does():
    report = {
        "status": "degraded",
        "uptime": 3.0,
        "refused": {},
        "subscriptions": 0,
        "channels": 0,
        "updates_in": 0,
        "updates_out": 0,
        "slow_client_drops": 2,
        "publish_errors": 0,
        "store": "redis",
        "shards": [
            {"shard": 0, "address": "10.0.0.5:6379", "connected": True,
             "watched_channels": 4, "pubsub_losses": 0},
            {"shard": 1, "address": "10.0.0.6:6379", "connected": False,
             "watched_channels": 0, "pubsub_losses": 3},
        ],
    }  # fmt: skip
    snap = stats.snapshot(report, {}, [], stats.Recorder().rates(), START)
    assert [s["connected"] for s in snap["shards"]] == [True, False]
    assert snap["shards"][1]["address"] == "10.0.0.6:6379"
    assert snap["status"] == "degraded" and snap["totals"]["drops"] == 2


# Key, tickets and the page


def request(path=b"/stats", key=None, bearer=None):
    req = DummyRequest([])
    req.path = path
    if key is not None:
        req.args = {b"key": [key]}
    if bearer is not None:
        req.requestHeaders.setRawHeaders(b"authorization", [b"Bearer " + bearer])
    return req


def test_the_key_in_the_query_or_a_bearer_header():
    key = stats.StatsKey(KEY, make_clock())
    key.check_request(request(key=KEY.encode()))
    key.check_request(request(bearer=KEY.encode()))
    with pytest.raises(Unauthorized, match=r"\?key=<key> or Authorization: Bearer"):
        key.check_request(request())
    with pytest.raises(Forbidden, match="wrong stats key"):
        key.check_request(request(key=b"x" * 20))
    with pytest.raises(Forbidden):
        key.check_request(request(bearer=KEY.encode() + b"x"))


def test_page_tickets_expire_and_cannot_be_forged():
    clock = make_clock()
    key = stats.StatsKey(KEY, clock)
    ticket = key.ticket()
    key.check_ticket(ticket)
    expires, _, mac = ticket.partition(".")
    for forged in (
        f"{int(expires) + 1}.{mac}",
        f"{expires}.{'0' * 64}",
        "nonsense",
        "\u0661.\u0662",
    ):
        with pytest.raises(Forbidden, match="wrong stats key or ticket"):
            key.check_ticket(forged)
    other = stats.StatsKey("another key of twenty", clock)
    with pytest.raises(Forbidden):
        other.check_ticket(ticket)
    clock.advance(stats.TICKET_TTL + 1)
    with pytest.raises(Forbidden, match="expired: reload"):
        key.check_ticket(ticket)
    assert stats.TICKET_TTL <= 600  # minutes, not a day: a copied ticket soon opens nothing


def render(site, req):
    resource = site.getResourceFor(req)
    body = resource.render(req)
    return req.responseCode or 200, body if isinstance(body, bytes) else b"".join(req.written)


def test_page_refuses_without_key_and_with_a_wrong_one():
    clock = make_clock()
    site = make_site(make_hub(clock), clock, stats_key=KEY)
    req = request()
    req.postpath = [b"stats"]
    code, body = render(site, req)
    assert code == 401
    assert req.responseHeaders.getRawHeaders(b"www-authenticate") == [
        b'Bearer realm="twistedpush stats"'
    ]
    assert json.loads(body)["error"]["code"] == "unauthorized"
    req = request(key=b"wrong" * 4)
    req.postpath = [b"stats"]
    code, body = render(site, req)
    assert code == 403
    assert json.loads(body)["error"]["message"] == "wrong stats key"


def test_page_has_no_external_assets_and_a_nonce_policy():
    clock = make_clock()
    site = make_site(make_hub(clock), clock, stats_key=KEY)
    req = request(bearer=KEY.encode())
    req.postpath = [b"stats"]
    code, body = render(site, req)
    assert code == 200
    html = body.decode()
    policy = req.responseHeaders.getRawHeaders(b"content-security-policy")[0].decode()
    nonce = re.search(r"'nonce-([^']+)'", policy).group(1)
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert html.count(f'nonce="{nonce}"') == 2  # the one style and the one script
    assert not re.search(r"(src|href)=", html)
    assert KEY not in html  # the page opens its feed with a ticket, not the key
    ticket = re.search(r'name="stats-ticket" content="([^"]+)"', html).group(1)
    stats.StatsKey(KEY, clock).check_ticket(ticket)
    assert req.responseHeaders.getRawHeaders(b"cache-control") == [b"no-store"]


def test_off_by_default_stats_is_absent():
    clock = make_clock()
    site = make_site(make_hub(clock), clock)
    req = request(key=KEY.encode())
    req.postpath = [b"stats"]
    code, _ = render(site, req)
    assert code == 404
    assert site.stats is None
    assert not site.is_push_path(b"/stats")  # in one-port mode, Django's path


def test_stats_needs_a_tracked_admission():
    clock = make_clock()
    with pytest.raises(TypeError, match="TrackedAdmission"):
        make_site(make_hub(clock), clock, Admission(), stats_key=KEY)


def test_the_access_log_never_shows_the_key():
    req = request(key=KEY.encode())
    req.uri = f"/stats?x=1&key={KEY}".encode()
    req.method = b"GET"
    req.clientproto = b"HTTP/1.1"
    req.code = 200
    req.sentLength = 10
    req.requestHeaders.setRawHeaders(b"referer", [f"https://push/stats?key={KEY}".encode()])
    line = stats.access_log_line("[t]", req)
    assert KEY not in line
    assert "GET /stats?x=1&key=[hidden] HTTP/1.1" in line
    assert '"https://push/stats?key=[hidden]"' in line


@pytest.mark.parametrize(
    ("target", "logged"),
    [
        (f"/stats?%6bey={KEY}", "/stats?%6bey=[hidden]"),
        (f"/stats?k%65y={KEY}&n=1", "/stats?k%65y=[hidden]&n=1"),
        (f"/stats?n=1;key={KEY}", "/stats?n=1;key=[hidden]"),
        (f'/stats?key=ab"{KEY}&x', "/stats?key=[hidden]&x"),
        (f"/health?keys=1&key={KEY}&key={KEY}", "/health?keys=1&key=[hidden]&key=[hidden]"),
        ("/stats?monkey=1&key", "/stats?monkey=1&key"),
    ],
)
def test_the_access_log_hides_every_argument_twisted_reads_as_key(target, logged):
    """Twisted decodes argument names and splits on ``;`` too: ``%6bey=`` is the key."""
    clock = make_clock()
    site = make_site(make_hub(clock), clock, stats_key=KEY)
    req = request()
    req.uri = target.encode()
    req.method = b"GET"
    req.clientproto = b"HTTP/1.1"
    req.code = 200
    req.sentLength = 10
    line = stats.access_log_line("[t]", req)
    assert KEY not in line
    assert f"GET {logged} HTTP/1.1" in line.replace('\\"', '"')
    if target.startswith("/stats?%6bey"):  # and this one does open the page
        req.args = {b"key": [KEY.encode()]}  # as twisted.web parses that target
        req.postpath = [b"stats"]
        assert render(site, req)[0] == 200


# The feed's WebSocket, over iosim


def watch(site, clock, origin=None, host="localhost"):
    factory = WebSocketClientFactory(f"ws://{host}/stats/ws", reactor=clock, origin=origin)
    factory.protocol = Client
    client, server, pump = connectedServerAndClient(
        lambda: site.buildProtocol(None), lambda: factory.buildProtocol(None), clock=clock
    )
    pump.flush()
    return client, pump


def test_feed_sends_a_snapshot_every_second_once_the_key_is_given(node):
    clock, hub, site = node
    client, pump = watch(site, clock)
    clock.advance(1)
    pump.flush()
    assert client.received == []  # nothing before the key
    client.send_json({"key": KEY})
    pump.flush()
    assert len(client.received) == 1
    assert client.received[0]["connections"]["stats"] == 1
    hub.subscribe(Recorder(), "room")
    publish(hub, "room", count=4)
    clock.advance(1)
    pump.flush()
    latest = client.received[-1]
    assert len(client.received) == 2
    assert latest["rates"]["publish"]["per_second"][-1] == 4.0
    assert latest["busiest"] == [{"channel": "room", "subscribers": 1}]


def page_ticket(site):
    """The ticket in the /stats page's HTML."""
    req = request(bearer=KEY.encode())
    req.postpath = [b"stats"]
    html = render(site, req)[1].decode()
    return re.search(r'name="stats-ticket" content="([^"]+)"', html).group(1)


def test_feed_accepts_the_pages_ticket(node):
    clock, hub, site = node
    client, pump = watch(site, clock)
    client.send_json({"ticket": page_ticket(site)})
    pump.flush()
    assert client.received and client.closed is None


def test_an_open_page_reconnects_with_the_fresh_ticket_each_snapshot_brings(node):
    clock, hub, site = node
    first = page_ticket(site)
    client, pump = watch(site, clock)
    client.send_json({"ticket": first})
    pump.flush()
    for _ in range(stats.TICKET_TTL + 1):
        clock.advance(1)
        pump.flush()
    fresh = client.received[-1]["ticket"]
    # The page's own ticket has expired: a page (or a copy of its HTML) that old is refused.
    late, pump = watch(site, clock)
    late.send_json({"ticket": first})
    pump.flush()
    assert late.received == []
    assert (late.closed, late.close_reason) == (
        4403,
        "the page's ticket has expired: reload the page",
    )
    # The open page reconnects (after a restart, say) with the last one it was sent.
    again, pump = watch(site, clock)
    again.send_json({"ticket": fresh})
    pump.flush()
    assert again.received and again.closed is None


@pytest.mark.parametrize(
    ("message", "code", "reason"),
    [
        ({"key": "wrong key of twenty!"}, 4403, "wrong stats key"),
        ({"ticket": "123.abc"}, 4403, "wrong stats key or ticket"),
        ({"hello": 1}, 4401, 'send {"key": "<stats key>"} first'),
        ("not an object", 4401, 'send {"key": "<stats key>"} first'),
    ],
)
def test_feed_refuses_a_wrong_or_missing_key(node, message, code, reason):
    clock, hub, site = node
    client, pump = watch(site, clock)
    client.sendMessage(json.dumps(message).encode())
    pump.flush()
    clock.advance(1)
    pump.flush()
    assert client.received == []
    assert (client.closed, client.close_reason) == (code, reason)


def test_feed_closes_on_a_client_that_never_sends_its_key(node):
    clock, hub, site = node
    client, pump = watch(site, clock)
    clock.advance(stats.AUTH_TIMEOUT)
    pump.flush()
    assert (client.closed, client.close_reason) == (4401, "no stats key within 10 s")
    assert sum(site.stats.current()["connections"].values()) == 0


@pytest.mark.parametrize("allowed", [(), ("https://app.example.com",)])
def test_feed_only_its_own_page_whatever_allowed_origin_says(allowed):
    """A page elsewhere must not read the feed with a ticket or key it got hold of:
    by default (no --allowed-origin, every page may open /ws) as with one."""
    clock = make_clock()
    admission = stats.TrackedAdmission()
    admission.limits.allowed_origins = allowed
    site = make_site(make_hub(clock), clock, admission, stats_key=KEY)
    for origin, admitted in (
        ("http://localhost", True),  # the page's own origin (Host: localhost)
        (None, True),  # a script
        ("https://app.example.com", False),
        ("https://evil.example", False),
    ):
        client, pump = watch(site, clock, origin=origin)
        assert (client.state == client.STATE_OPEN) is admitted, origin
        if not admitted:
            assert "only /stats opens /stats/ws" in client.close_reason
    assert admission.refused["origin"] == 2
    assert sum(site.stats.current()["connections"].values()) == 2


@pytest.mark.parametrize(
    ("origin", "host", "same"),
    [
        ("http://localhost", "localhost:80", True),
        ("https://push.example.com", "push.example.com", True),
        ("https://push.example.com", "PUSH.example.com:443", True),
        ("http://127.0.0.1:8013", "127.0.0.1:8013", True),
        ("http://127.0.0.1:8013", "127.0.0.1:8014", False),
        ("https://push.example.com", "push.example.com:80", False),
        ("https://evil.example", "push.example.com", False),
        ("null", "push.example.com", False),
        ("http://a:b", "a", False),
        ("http://a", None, False),
    ],
)
def test_same_origin(origin, host, same):
    assert stats.same_origin(origin, host) is same


# Options


def test_stats_key_from_the_option_or_the_environment(monkeypatch):
    monkeypatch.delenv("SERVERPUSH_STATS_KEY", raising=False)
    assert parse()["stats-key"] is None  # off by default
    assert parse("--stats-key", KEY)["stats-key"] == KEY
    monkeypatch.setenv("SERVERPUSH_STATS_KEY", "e" * 16)
    assert parse()["stats-key"] == "e" * 16


def test_a_short_stats_key_is_one_line_and_exit_2(capsys, monkeypatch):
    monkeypatch.delenv("SERVERPUSH_STATS_KEY", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        parse("--stats-key", "secret")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("serverpush: error: --stats-key must be at least 16 characters")
    assert err.count("\n") == 1


def test_the_node_ticks_its_feed_only_with_a_key(monkeypatch):
    from twisted.internet.testing import MemoryReactorClock

    from twistedpush.tap import build_service

    monkeypatch.delenv("SERVERPUSH_STATS_KEY", raising=False)
    reactor = MemoryReactorClock()
    plain = build_service(parse("--port", "tcp:0", "--notifier", "tcp:0"), reactor)
    assert not any(isinstance(s, stats.TimerService) for s in plain)
    node = build_service(
        parse("--port", "tcp:0", "--notifier", "tcp:0", "--stats-key", KEY), reactor
    )
    [timer] = [s for s in node if isinstance(s, stats.TimerService)]
    node.startService()
    assert timer.running and reactor.getDelayedCalls()
    node.stopService()


def test_runserverpush_passes_the_stats_key_setting_on(settings):
    from django_adapter.management.commands.runserverpush import server_arguments

    settings.SERVERPUSH_STATS_KEY = KEY
    assert parse(*server_arguments())["stats-key"] == KEY
    settings.SERVERPUSH_STATS_KEY = None
    assert "--stats-key" not in server_arguments()


def test_health_counts_the_frozen_objects_once(monkeypatch):
    """Python counts frozen objects by walking them all: asked on every /health, it
    took half a node's time at 19,000 connections probed ten times a second."""
    import gc

    counted = []
    monkeypatch.setattr(gc, "get_freeze_count", lambda: counted.append(1) or 52_000)
    clock = make_clock()
    site = make_site(make_hub(clock), clock)
    health = site.resource.children[b"health"]
    reports = [json.loads(health.render_GET(DummyRequest([b""]))) for _ in range(3)]
    assert [r["gc_frozen_objects"] for r in reports] == [52_000] * 3
    assert len(counted) == 1
