"""The notifier's box codec against Twisted's AMP: the same bytes and values, any split."""

import itertools
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.protocols import amp

from twistedpush import commands
from twistedpush.commands import (
    CHUNK,
    MAX_KEY,
    BoxReader,
    IntegerList,
    SendUpdate,
    _update_arguments,
    pack_box,
    parse_boxes,
    read_update,
    update_box,
    update_pairs,
)

keys = st.binary(min_size=1, max_size=MAX_KEY)
boxes = st.dictionaries(keys, st.binary(max_size=300), max_size=5)


@settings(max_examples=200, deadline=None)
@given(boxes)
def test_pack_box_writes_what_amp_writes(box):
    assert pack_box(sorted(box.items())) == amp.AmpBox(box).serialize()  # AMP sorts keys


@settings(max_examples=200, deadline=None)
@given(st.lists(boxes, max_size=5), st.lists(st.integers(min_value=0), max_size=8))
def test_reader_gives_every_box_once_however_the_bytes_are_split(sequence, cuts):
    wire = b"".join(amp.AmpBox(box).serialize() for box in sequence)
    points = sorted({cut % (len(wire) + 1) for cut in cuts} | {0, len(wire)})
    reader = BoxReader(max_box=1 << 20)
    read = []
    for start, end in itertools.pairwise(points):
        read += reader.feed(wire[start:end])
    assert read == sequence and reader.error is None


def test_reader_refuses_a_long_key_after_the_boxes_before_it():
    good = pack_box([(b"a", b"1")])
    reader = BoxReader(max_box=1 << 20)
    assert reader.feed(good + b"\x01\x00" + b"k" * 256) == [{b"a": b"1"}]
    assert reader.error == "an AMP key is 256 bytes long; at most 255 are allowed"
    assert reader.feed(good) == []  # nothing more is read


def test_reader_refuses_a_box_that_never_ends():
    reader = BoxReader(max_box=200_000)
    value = pack_box([(b"data", b"x" * CHUNK)])[:-2]  # one pair, no end mark
    for _ in range(4):
        assert reader.feed(value) == []
    assert reader.error == "an AMP box is over 200000 bytes"


@settings(max_examples=200, deadline=None)
@given(
    st.text(min_size=1, max_size=50),
    st.binary(max_size=3 * CHUNK),
    st.none() | st.text(min_size=1, max_size=20),
)
def test_update_arguments_round_trip_like_amp(channel, data, name):
    ours = parse_boxes(pack_box(update_pairs(channel, data, name)))[0]
    theirs = SendUpdate.makeArguments({"channel": channel, "data": data, "name": name}, None)
    assert ours == dict(theirs)
    assert read_update(ours) == amp._stringsToObjects(ours, _update_arguments(), None)
    assert update_box(channel, data, name) == pack_box(update_pairs(channel, data, name))


def test_read_update_names_what_is_missing():
    for box, missing in [({b"data": b"1"}, b"channel"), ({b"channel": b"c"}, b"data")]:
        try:
            read_update(box)
        except KeyError as e:
            assert e.args == (missing,)
        else:
            raise AssertionError("a box without its argument was read")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2**62), max_size=50))
def test_integer_list_writes_what_amp_writes(values):
    encoded = IntegerList().toString(values)
    assert encoded == amp.ListOf(amp.Integer()).toString(values)
    assert IntegerList().fromString(encoded) == values


class CountingLength:
    """Stands in for the codec's length struct and counts the lengths it reads:
    each read is a pair's key or value length, or a box's end, looked at once
    more. Counting, not timing, tells linear work from quadratic."""

    def __init__(self) -> None:
        self.reads = 0
        self._real = commands._LENGTH

    def unpack_from(self, buffer: bytes, offset: int = 0) -> tuple[int]:
        self.reads += 1
        return self._real.unpack_from(buffer, offset)

    def pack(self, value: int) -> bytes:
        return self._real.pack(value)


@contextmanager
def counting_lengths() -> Iterator[CountingLength]:
    counter = CountingLength()
    commands._LENGTH = counter
    try:
        yield counter
    finally:
        commands._LENGTH = counter._real


def segments(wire: bytes, count: int) -> list[bytes]:
    size = -(-len(wire) // count)
    return [wire[start : start + size] for start in range(0, len(wire), size)]


def test_a_big_box_in_many_segments_is_parsed_once():
    """1 MB of tiny pairs in one box, in 100 segments: each length is read about
    once, not once per segment (which took 6.6 s of CPU)."""
    pairs = [(b"k%d" % index, b"") for index in range(110_000)]
    wire = pack_box(pairs)
    assert len(wire) > 1_000_000
    for count in (1, 100, 5_000):
        reader = BoxReader(max_box=4 << 20)
        read = []
        with counting_lengths() as counter:
            for segment in segments(wire, count):
                read += reader.feed(segment)
        assert read == [dict(pairs)] and reader.error is None
        assert counter.reads <= 2 * len(pairs) + 1 + 2 * count


def test_a_pair_arriving_byte_by_byte_is_joined_once_it_is_whole():
    """A 64 KiB value one byte at a time: the reader waits for the bytes the pair
    said it needs instead of parsing (and joining) again on every byte."""
    wire = pack_box([(b"data", b"x" * CHUNK)])
    reader = BoxReader(max_box=1 << 20)
    read = []
    with counting_lengths() as counter:
        for index in range(len(wire)):
            read += reader.feed(wire[index : index + 1])
    assert read == [{b"data": b"x" * CHUNK}]
    assert counter.reads <= 10


@settings(max_examples=200, deadline=None)
@given(st.lists(boxes, max_size=5), st.lists(st.integers(min_value=0), max_size=20))
def test_any_split_reads_each_length_about_once(sequence, cuts):
    wire = b"".join(pack_box(sorted(box.items())) for box in sequence)
    points = sorted({cut % (len(wire) + 1) for cut in cuts} | {0, len(wire)})
    reader = BoxReader(max_box=1 << 20)
    read = []
    with counting_lengths() as counter:
        for start, end in itertools.pairwise(points):
            read += reader.feed(wire[start:end])
    assert read == sequence
    pairs = sum(map(len, sequence))
    assert counter.reads <= 2 * pairs + len(sequence) + 2 * (len(points) - 1)


def test_parse_boxes_refuses_what_is_not_whole_boxes():
    good = pack_box([(b"a", b"1")])
    assert parse_boxes(good * 2) == [{b"a": b"1"}] * 2
    for bad in (good[:-1], good + b"\x00", good + good[:5]):
        with pytest.raises(ValueError, match="not finished"):
            parse_boxes(bad)
    with pytest.raises(ValueError, match="256 bytes long"):
        parse_boxes(b"\x01\x00" + b"k" * 256)
