"""django_adapter.viewers.ViewerCounts: a page's viewer count merged per channel and
published once more when every node has reported (deterministic: task.Clock)."""

from __future__ import annotations

import inspect
import logging

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from django_adapter import viewers
from django_adapter.viewers import MERGE_INTERVAL, SETTLE, ViewerCounts
from twistedpush.redis_history import RedisHistory

PAGE, OTHER = "viewers:/chat/", "viewers:/"


class Publications:
    """A ViewerCounts on a Clock, and when it published what."""

    def __init__(self, publish=None):
        self.clock = Clock()
        self.seen: list[tuple[float, str]] = []
        self.counts = ViewerCounts(self.clock, publish or self.record)

    def record(self, channel: str) -> None:
        self.seen.append((self.clock.seconds(), channel))

    def at(self, when: float, *channels: str) -> None:
        """Changes of ``channels`` at ``when`` (seconds from the start)."""
        self.until(when)
        for channel in channels:
            self.counts.changed(channel)

    def until(self, when: float) -> list[tuple[float, str]]:
        """Run to ``when``, each call at its own time: Clock.advance runs the calls
        due in a step at the step's end."""
        while True:
            due = [c.getTime() for c in self.clock.getDelayedCalls() if c.getTime() <= when]
            self.clock.rightNow = min(due, default=when)
            self.clock.advance(0)
            if not due:
                return self.seen


def test_a_change_is_published_at_once_and_again_when_every_node_has_reported():
    p = Publications()
    p.at(0, PAGE)
    assert p.until(0) == [(0, PAGE)]
    assert p.until(SETTLE - 0.01) == [(0, PAGE)]
    assert p.until(60) == [(0, PAGE), (SETTLE, PAGE)]  # once more, then nothing


def test_a_reload_storm_makes_a_publication_every_merge_interval_not_one_per_change():
    p = Publications()
    for tick in range(20):  # 200 copies closing and opening over 1 s
        p.at(tick * 0.05, *[PAGE] * 10)
    merged = [(0, PAGE), (MERGE_INTERVAL, PAGE), (2 * MERGE_INTERVAL, PAGE)]
    assert p.until(1) == merged
    assert p.until(60) == [*merged, (1 + SETTLE, PAGE)]


def test_channels_are_merged_each_on_its_own():
    p = Publications()
    p.at(0, PAGE, OTHER, PAGE)
    p.at(0.1, OTHER)
    assert sorted(p.until(60)) == [
        (0, OTHER),
        (0, PAGE),
        (MERGE_INTERVAL, OTHER),
        (SETTLE, PAGE),
        (MERGE_INTERVAL + SETTLE, OTHER),
    ]


def test_a_change_before_the_follow_up_replaces_it_and_is_followed_in_turn():
    p = Publications()
    p.at(0, PAGE)
    p.at(1, PAGE)
    assert p.until(60) == [(0, PAGE), (1, PAGE), (1 + SETTLE, PAGE)]


def test_a_change_just_after_the_follow_up_still_waits_the_merge_interval():
    p = Publications()
    p.at(0, PAGE)
    p.at(SETTLE + 0.1, PAGE)
    assert p.until(60) == [
        (0, PAGE),
        (SETTLE, PAGE),
        (SETTLE + MERGE_INTERVAL, PAGE),
        (SETTLE + MERGE_INTERVAL + SETTLE, PAGE),
    ]
    p.at(100, PAGE)  # long after: at once again
    assert p.until(100)[-1] == (100, PAGE)


def test_a_slow_publication_is_waited_for_so_counts_arrive_in_order():
    running: list[Deferred] = []
    p = Publications(lambda channel: running.append(Deferred()) or running[-1])
    p.at(0, PAGE)
    p.at(0.2, PAGE)
    p.until(2)
    assert len(running) == 1  # the first is still on its way
    running[0].callback(None)
    p.until(2)
    assert len(running) == 2  # the change, at once now that the interval is past
    running[1].callback(None)
    p.until(2 + SETTLE)
    assert len(running) == 3


def test_a_failed_publication_is_logged_and_the_next_change_publishes(caplog):
    calls = []

    def publish(channel):
        calls.append(channel)
        if len(calls) == 1:
            raise RuntimeError("boom")

    p = Publications(publish)
    with caplog.at_level(logging.ERROR, "django_adapter"):
        p.at(0, PAGE)
        p.until(0)
    assert "viewer count of viewers:/chat/ not published" in caplog.text and "boom" in caplog.text
    p.until(60)
    assert calls == [PAGE, PAGE]  # the follow-up went out all the same


def test_the_follow_up_comes_after_a_nodes_presence_report():
    """SETTLE is meant to cover one report interval of every node, and a little."""
    interval = inspect.signature(RedisHistory).parameters["presence_interval"].default
    assert interval < SETTLE <= interval + 0.5


def test_only_viewer_channels_are_counted(monkeypatch):
    handed = []
    monkeypatch.setattr("twisted.internet.reactor.callFromThread", lambda f, *a: handed.append(a))
    viewers.count_changed(sender=None, user=None, channel="demo.chat")
    viewers.count_changed(sender=None, user=None, channel=PAGE)
    assert handed == [(PAGE,)]
