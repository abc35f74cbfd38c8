"""The shared decoded-tile cache: LRU by bytes, bounded, thread-safe, one
decode per tile however many requests want it at once."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from service.tiles.cache import TileCache
from service.tiles.stats import ReadStats, Recorder


def tile(nbytes: int, value: int = 0) -> np.ndarray:
    return np.full(nbytes, value, np.uint8)


def test_least_recently_used_bytes_are_evicted_first() -> None:
    cache = TileCache(300)
    for key in "abc":
        cache.get(key, lambda: tile(100))
    cache.get("a", lambda: pytest.fail("a is cached"))  # a becomes the most recent
    _, hit = cache.get("d", lambda: tile(150))  # 450 bytes: b then c go
    assert not hit and cache.size_bytes == 250 and len(cache) == 2
    assert cache.get("a", lambda: tile(100))[1] and cache.get("d", lambda: tile(150))[1]
    assert not cache.get("b", lambda: tile(100))[1]


def test_a_tile_over_the_budget_is_served_but_not_kept() -> None:
    cache = TileCache(100)
    value, hit = cache.get("big", lambda: tile(101, 7))
    assert not hit and value[0] == 7 and len(cache) == 0 and cache.size_bytes == 0
    disabled = TileCache(0)
    assert not disabled.get("x", lambda: tile(1))[1] and not disabled.get("x", lambda: tile(1))[1]


def test_cached_tiles_are_read_only() -> None:
    cache = TileCache(100)
    value, _ = cache.get("a", lambda: tile(10))
    with pytest.raises(ValueError):
        value[0] = 1


def test_concurrent_misses_of_one_tile_decode_it_once() -> None:
    cache = TileCache(1 << 20)
    loads, release = [], threading.Event()

    def load() -> np.ndarray:
        loads.append(1)
        release.wait(5)
        return tile(10, 3)

    results: list[tuple[np.ndarray, bool]] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("k", load))) for _ in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)  # let every thread reach the cache while the first load is blocked
    release.set()
    for thread in threads:
        thread.join()
    assert len(loads) == 1
    assert sorted(hit for _, hit in results) == [False] + [True] * 5
    assert all(value[0] == 3 for value, _ in results)


def test_a_failed_load_reaches_every_waiter_and_is_not_cached() -> None:
    cache = TileCache(1 << 20)
    with pytest.raises(OSError, match="disk"):
        cache.get("k", lambda: (_ for _ in ()).throw(OSError("disk gone")))
    assert cache.get("k", lambda: tile(4))[1] is False and len(cache) == 1


def test_many_threads_keep_the_byte_budget() -> None:
    cache = TileCache(10_000)
    rng_keys = np.random.default_rng(0).integers(0, 60, (8, 400))

    def worker(keys: np.ndarray) -> None:
        for key in keys.tolist():
            value, _ = cache.get(key, lambda key=key: tile(100 + key, key))
            assert value[0] == key and value.nbytes == 100 + key

    threads = [threading.Thread(target=worker, args=(keys,)) for keys in rng_keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 0 < cache.size_bytes <= 10_000
    assert cache.size_bytes == sum(value.nbytes for value in cache._entries.values())  # no lost update


def test_read_stats_add_up_across_threads() -> None:
    request, totals = ReadStats(), ReadStats()
    recorder = Recorder(request, totals, None)
    threads = [
        threading.Thread(target=lambda: [recorder.record(bytes_read=3, cache_hits=1) for _ in range(1000)])
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (
        request.as_dict()
        == totals.as_dict()
        == {"bytes_read": 12000, "tiles_decoded": 0, "cache_hits": 4000, "cache_misses": 0}
    )
