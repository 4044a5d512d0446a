"""History sharded over several Redis servers (``--redis`` repeated): one store per shard.

Each channel lives on one shard, chosen by a jump consistent hash (Lamping and
Veach, 2014) of a 64-bit hash of its name: ``jump(blake2b-64(name), shards)``.
The same name gives the same shard on every node and in every process; adding a
shard at the end of the list moves about 1/(n+1) of the channels, all to the new
shard, and none between the old ones.

Each shard is a :class:`~twistedpush.redis_history.RedisHistory` with its own
clock (its Redis's). Positions increase within a shard; across shards they are
made comparable where the contract needs it, without comparing host clocks:

- ``now()`` (CurrentTimestamp) reads every shard's position, takes the greatest
  and raises every other shard's clock to it before answering, so every later
  update on every shard is above it. It is refused while a shard is down: that
  shard's clock could not be raised.
- A shard whose command connection (re)connects is raised to the greatest
  position of the shards that are up before it takes requests, so a shard that
  was away (or is new, or lost its data) never hands out a position below one
  handed out meanwhile.

A ``SendUpdates`` batch spanning shards is refused before anything is stored
when one of its shards is known to be down; otherwise each shard stores its part
at once (all or nothing within a shard), and if a shard fails, the error names
the updates that were stored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, FirstError, fail, gatherResults
from twisted.python.failure import Failure
from zope.interface import implementer

from twistedpush.errors import Unavailable
from twistedpush.history import IHistoryStore, Publication, Update
from twistedpush.redis_history import RedisHistory, redis_stats


def jump_hash(key: int, buckets: int) -> int:
    """The bucket in ``range(buckets)`` of the 64-bit ``key`` (jump consistent hash)."""
    bucket, jump = -1, 0
    while jump < buckets:
        bucket = jump
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        jump = int((bucket + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return bucket


def shard_of(channel: str, shards: int) -> int:
    """The shard of ``channel`` among ``shards``: the same on every node and run."""
    digest = hashlib.blake2b(channel.encode(), digest_size=8).digest()
    return jump_hash(int.from_bytes(digest, "big"), shards)


def _ranges(indexes: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` as ``0-2,5,7-8``."""
    parts = []
    start = previous = indexes[0]
    for index in [*indexes[1:], None]:
        if index is not None and index == previous + 1:
            previous = index
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if index is not None:
            start = previous = index
    return ",".join(parts)


@implementer(IHistoryStore)
class ShardedHistory:
    """Several Redis stores behind one interface; each channel on one of them."""

    def __init__(self, shards: Sequence[RedisHistory]) -> None:
        self.shards = list(shards)
        for shard in self.shards:
            shard.prepare = lambda shard=shard: self._align(shard)

    def _shard(self, channel: str) -> RedisHistory:
        return self.shards[shard_of(channel, len(self.shards))]

    def _down(self, shards: Sequence[RedisHistory]) -> Unavailable | None:
        down = [shard.address for shard in shards if not shard.accepting]
        if down:
            return Unavailable(f"Redis {', '.join(down)} not connected")
        return None

    def _align(self, shard: RedisHistory) -> Deferred:
        """Raise ``shard``'s clock to the greatest position the other shards handed out.

        A shard whose history has not begun (new, or emptied) waits until every other
        shard can be reached, and nothing runs on it before it is raised: its first
        script sets the moment its history begins, which must be above every position
        handed out anywhere, so that a ``since`` from before (a channel that moved to
        it) gets a reset."""
        return shard.read("start").addCallback(self._read_clocks, shard)

    def _read_clocks(self, start: str | None, shard: RedisHistory) -> Deferred:
        others = [s for s in self.shards if s is not shard]
        away = [s.address for s in others if not s.connected]
        if start is None and away:
            raise Unavailable(f"a new history begins once {', '.join(away)} can be reached")
        clocks = [s.read("clock") for s in others if s.connected]
        asked = gatherResults(clocks, consumeErrors=True)
        return asked.addCallback(
            lambda positions: shard.raise_to(max((int(p or 0) for p in positions), default=0))
        )

    def start(
        self,
        on_update: Callable[[Update], None],
        on_resync: Callable[[str], None] = lambda channel: None,
    ) -> Deferred:
        return gatherResults([shard.start(on_update, on_resync) for shard in self.shards])

    def stop(self) -> Deferred:
        return DeferredList([shard.stop() for shard in self.shards], consumeErrors=True)

    def publish(self, items: Sequence[Publication]) -> Deferred:
        count = len(self.shards)
        parts: dict[int, list[int]] = {}
        for index, (channel, _, _) in enumerate(items):
            parts.setdefault(shard_of(channel, count), []).append(index)
        if len(parts) == 1:
            (number,) = parts
            return self.shards[number].publish(items)
        down = self._down([self.shards[number] for number in parts])
        if down is not None:
            return fail(Unavailable(f"{down.message}: nothing of this batch was stored"))
        asked = [
            self.shards[number].publish([items[index] for index in indexes])
            for number, indexes in parts.items()
        ]
        return DeferredList(asked, consumeErrors=True).addCallback(
            self._gathered, list(parts.items()), len(items)
        )

    def _gathered(
        self,
        results: list[tuple[bool, Any]],
        parts: list[tuple[int, list[int]]],
        count: int,
    ) -> list[int]:
        stamps = [0] * count
        stored: list[int] = []
        errors = []
        for (ok, result), (number, indexes) in zip(results, parts, strict=True):
            if ok:
                for index, ts in zip(indexes, result, strict=True):
                    stamps[index] = ts
                stored += indexes
            else:
                assert isinstance(result, Failure)
                errors.append(f"{self.shards[number].address}: {result.getErrorMessage()}")
        if not errors:
            return stamps
        what = f"updates {_ranges(sorted(stored))} (from 0) were stored" if stored else "none"
        raise Unavailable(f"batch partly stored, {what}; failed: {'; '.join(errors)}")

    def replay(self, channel: str, since: int | None) -> Deferred:
        return self._shard(channel).replay(channel, since)

    def now(self) -> Deferred:
        down = self._down(self.shards)
        if down is not None:
            return fail(down)
        asked = gatherResults([shard.now() for shard in self.shards], consumeErrors=True)
        return asked.addCallbacks(self._raise_all, self._first_error)

    def _raise_all(self, positions: list[int]) -> Deferred:
        top = max(positions)
        lower = [s for s, p in zip(self.shards, positions, strict=True) if p < top]
        raised = gatherResults([shard.raise_to(top) for shard in lower], consumeErrors=True)
        return raised.addCallbacks(lambda _: top, self._first_error)

    @staticmethod
    def _first_error(failure: Failure) -> Failure:
        """gatherResults wraps the first failure: hand on the store's own error."""
        if isinstance(failure.value, FirstError):
            return failure.value.subFailure
        return failure

    def history(self, channel: str, since: int | None, limit: int) -> Deferred:
        return self._shard(channel).history(channel, since, limit)

    def report(self, channel: str, subscribers: int) -> None:
        self._shard(channel).report(channel, subscribers)

    def presence(self, channel: str, local: int) -> Deferred:
        """From the channel's shard, where every node reports its count of it."""
        return self._shard(channel).presence(channel, local)

    def watch(self, channel: str) -> None:
        self._shard(channel).watch(channel)

    def unwatch(self, channel: str) -> None:
        self._shard(channel).unwatch(channel)

    def sweep(self) -> Deferred:
        return gatherResults([shard.sweep() for shard in self.shards])

    def healthy(self) -> bool:
        return all(shard.healthy() for shard in self.shards)

    def stats(self) -> dict:
        return redis_stats(self.shards)
