"""The v3 hot path's per-batch shortcuts (gateway/project_configs.py, issue 17): the one-regex check
of a batch of keys, the entries held by their exact value, the counts flushed once a second.
Each must answer what the per-key path answered."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bus import metrics
from bus.config_cache import cache_key, encode_entry, seal
from gateway.project_configs import HotCounts, ServedEntries, wanted_keys

A, B, C = "a" * 32, "b" * 32, "0123456789abcdef" * 2
MAC = b"k" * 32


def test_a_batch_of_keys_is_what_the_per_key_check_keeps() -> None:
    assert wanted_keys([A, B], None) == [(A, None), (B, None)]
    assert wanted_keys([A, B], ["r1", 7]) == [(A, "r1"), (B, None)]
    assert wanted_keys([], None) == []


def test_keys_joined_by_commas_inside_one_entry_are_not_keys() -> None:
    # Joined, [A + "," + B, C] reads like three valid keys; it is two entries, one not a key.
    assert wanted_keys([A + "," + B, C], None) == [(C, None)]
    assert wanted_keys([A + "," + B], None) == []


def test_a_key_asked_twice_keeps_its_first_revision() -> None:
    assert wanted_keys([A, B, A], ["first", None, "second"]) == [(A, "first"), (B, None)]


def test_entries_that_are_not_keys_are_left_out() -> None:
    assert wanted_keys([A, 1, None, "x", A.upper(), A + "\n", B], None) == [(A, None), (B, None)]


def entry(key: str, rev: str, body: bytes = b'{"ok":1}', trusted: tuple[str, ...] = ()) -> bytes:
    return seal(MAC, cache_key(key), encode_entry(rev, trusted, body))


def test_a_held_entry_serves_its_part_and_a_changed_value_is_checked_again() -> None:
    served = ServedEntries()
    held = served.for_key(MAC)
    value = entry(A, "r1")
    hit = served.admit(cache_key(A), A, value, MAC, [])
    assert hit is not None and held[cache_key(A)] is hit and hit.rev == "r1"
    assert served.prepare(cache_key(A), hit) == b'"' + A.encode() + b'":{"ok":1}'
    # Forged bytes under the same name: not the held value, so the MAC is checked, and fails.
    forged: list[str] = []
    tampered = value[:-1] + bytes([value[-1] ^ 1])
    assert held[cache_key(A)].value != tampered
    assert served.admit(cache_key(A), A, tampered, MAC, forged) is None
    assert forged == [cache_key(A)]


def test_a_new_mac_key_drops_every_held_entry() -> None:
    served = ServedEntries()
    served.admit(cache_key(A), A, entry(A, "r1"), MAC, [])
    assert served.for_key(MAC)
    assert served.for_key(b"other" * 8) == {}


def test_a_corrupt_document_is_dropped_when_it_is_first_sent() -> None:
    served = ServedEntries()
    value = seal(MAC, cache_key(A), b"r1\n\n\x28\xb5\x2f\xfdnot a frame")
    hit = served.admit(cache_key(A), A, value, MAC, [])
    assert hit is not None  # its header lines are fine: `unchanged` needs no document
    assert served.prepare(cache_key(A), hit) is None
    assert cache_key(A) not in served.for_key(MAC)


def test_a_disabled_key_is_its_disabled_document() -> None:
    served = ServedEntries()
    hit = served.admit(cache_key(A), A, entry(A, "", b'{"disabled":true}'), MAC, [])
    assert hit is not None and hit.disabled and hit.part == b'"' + A.encode() + b'":{"disabled":true}'


class Recorder:
    def __init__(self) -> None:
        self.points: list[tuple[str, float, dict[str, str]]] = []

    def incr(self, name: str, value: float = 1, tags: Any = None) -> None:
        self.points.append((name, value, dict(tags or {})))


def test_counts_are_summed_and_recorded_once_per_period(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    monkeypatch.setattr(metrics.metrics, "instance", recorder)

    async def run() -> None:
        counts = HotCounts(every=0.01)
        counts.add(100, 90, 10, 0, 100, 0)
        counts.add(5, 2, 0, 3, 2, 3)
        assert recorder.points == []  # nothing per request
        for _ in range(500):
            if recorder.points:
                break
            await asyncio.sleep(0.01)
        counts.add(1, 1, 0, 0, 1, 0)
        counts.flush()  # as at shutdown

    asyncio.run(run())
    first = {(n, tuple(t.items())): v for n, v, t in recorder.points[:5]}
    assert first == {("relay.keys", (("outcome", "requested"),)): 105, ("relay.keys", (("outcome", "served"),)): 92,
                     ("relay.keys", (("outcome", "unchanged"),)): 10, ("relay.keys", (("outcome", "pending"),)): 3,
                     ("relay.cache", (("result", "hit"),)): 102}
    assert recorder.points[5] == ("relay.cache", 3, {"result": "miss"})
    # What was added after the flush is recorded by the next one (here: at shutdown).
    assert recorder.points[6:] == [("relay.keys", 1, {"outcome": "requested"}), ("relay.keys", 1, {"outcome": "served"}),
                                   ("relay.cache", 1, {"result": "hit"})]


def test_the_batch_check_keeps_what_the_per_key_check_keeps() -> None:
    """Random batches of near-keys (wrong length, upper case, commas, newlines, non-ASCII)."""
    import random

    from messages.commands import PUBLIC_KEY_RE

    rng = random.Random(17)
    noisy = "0123456789abcdefgA,\n é"
    for _ in range(5000):
        keys = ["".join(rng.choice(noisy if rng.random() < 0.3 else "0123456789abcdef")
                        for _ in range(rng.choice((31, 32, 32, 32, 33)))) for _ in range(rng.randint(1, 4))]
        expected: list[tuple[str, None]] = []
        for key in keys:
            if PUBLIC_KEY_RE.fullmatch(key) and (key, None) not in expected:
                expected.append((key, None))
        assert wanted_keys(keys, None) == expected, keys


def test_the_access_log_writes_every_request_up_to_its_full_rate_then_a_share() -> None:
    from gateway.app import AccessSampler

    none = AccessSampler(full_rate=3, rate=0.0)
    assert [none.keep() for _ in range(5)] == [1.0, 1.0, 1.0, None, None]
    every = AccessSampler(full_rate=0, rate=1.0)
    assert {every.keep() for _ in range(5)} == {1.0}
    some = AccessSampler(full_rate=0, rate=0.5)
    kept = [some.keep() for _ in range(2000)]
    assert set(kept) == {0.5, None} and 700 < kept.count(0.5) < 1300
