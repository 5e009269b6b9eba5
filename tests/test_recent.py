"""The server's per-stream maps keep their most recently used streams only: a server that runs for
days meets streams without end, and must not grow with them."""

import pytest

from livescope.server.recent import RecentlyUsed


def test_the_least_recently_used_key_is_forgotten_beyond_the_limit_and_handed_over():
    forgotten = []
    recent = RecentlyUsed(2, on_evict=forgotten.append)
    assert recent.use("a", lambda: 1) == 1
    recent.use("b", lambda: 2)
    assert recent.use("a", lambda: 99) == 1  # kept, not remade: and now the most recent
    recent.use("c", lambda: 3)
    assert list(recent) == ["a", "c"] and forgotten == [2]
    recent.put("a", 10)
    recent.put("d", 4)
    assert dict(recent) == {"a": 10, "d": 4} and forgotten == [2, 3]


def test_reading_does_not_count_as_use():
    recent = RecentlyUsed(2)
    recent.put("a", 1)
    recent.put("b", 2)
    assert recent.get("a") == 1 and recent["a"] == 1 and list(recent.values()) == [1, 2]
    recent.put("c", 3)
    assert "a" not in recent


def test_a_limit_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        RecentlyUsed(0)
