"""The router's strategies, as pure functions of (request, endpoint state)."""

from __future__ import annotations

import pytest

from modelship.router import balance
from modelship.router.balance import Endpoint, PrefixAffinity, block_hashes


def eps(*loads: int) -> list[Endpoint]:
    return [Endpoint(f"http://127.0.0.1:{9000 + i}", in_flight=n) for i, n in enumerate(loads)]


def test_block_hashes_are_chained_so_equal_hashes_mean_equal_prefixes():
    a = block_hashes("x" * 100 + "y" * 100, block=50)
    b = block_hashes("x" * 100 + "z" * 100, block=50)
    c = block_hashes("q" * 50 + "x" * 50 + "y" * 100, block=50)  # the same later block, another start
    assert len(a) == 4 and a[:2] == b[:2] and a[2] != b[2]
    assert a[1] != c[1] and a[3] != c[3]  # a block's hash covers everything before it
    assert block_hashes("x" * 49, block=50) == []  # a partial block is not hashed


def test_round_robin_takes_turns():
    rr, e = balance.make("round-robin"), eps(0, 0, 0)
    assert [rr.pick([], e).url[-4:] for _ in range(6)] == ["9001", "9002", "9000", "9001", "9002", "9000"]


def test_least_load_takes_the_less_loaded_of_two():
    ll, e = balance.make("least-load", seed=1), eps(5, 0, 5)
    picks = [ll.pick([], e) for _ in range(200)]
    assert 110 < picks.count(e[1]) < 160  # the idle one wins every draw it is in: 2 of 3
    two = eps(3, 1)
    assert all(ll.pick([], two) is two[1] for _ in range(20))  # both drawn: the less loaded
    assert ll.pick([], e[:1]) is e[0]


def test_queue_aware_counts_what_the_engines_say_and_least_load_only_its_own():
    e = eps(1, 1)
    e[0].running, e[0].waiting = 6, 3  # another router replica keeps the first engine busy
    assert e[0].load == 9 and e[1].load == 1
    qa, ll = balance.make("queue-aware", seed=2), balance.make("least-load", seed=2)
    assert all(qa.pick([], e) is e[1] for _ in range(20))
    assert {ll.pick([], e).url for _ in range(40)} == {e[0].url, e[1].url}  # a tie, as far as it knows


def test_prefix_cache_sends_a_conversation_back_to_the_endpoint_that_holds_its_prefix():
    pa, e = PrefixAffinity(block=10, seed=3), eps(0, 0, 0)
    turn1 = block_hashes("system: be brief. user: hello there", 10)
    first = pa.pick(turn1, e)
    pa.served(turn1, first)
    turn2 = block_hashes("system: be brief. user: hello there assistant: hi user: more", 10)
    assert pa.pick(turn2, e) is first and pa.hits == 0  # counted once served, not when picked
    pa.served(turn2, first)
    assert pa.hits == len(turn1) and pa.blocks_seen == len(turn1) + len(turn2)
    # the longest prefix wins over a shorter one held elsewhere
    other = next(x for x in e if x is not first)
    pa.served(turn2[:1], other)
    assert pa.longest(turn2, e) == (first, len(turn2))


def test_prefix_cache_gives_way_to_load_beyond_the_bound():
    pa, e = PrefixAffinity(block=10, max_imbalance=2, seed=3), eps(0, 0, 0)
    blocks = block_hashes("a shared system prompt of some length", 10)
    pa.served(blocks, e[0])
    e[0].in_flight = 3  # mean 1: the holder is 2 above it, within the bound
    assert pa.pick(blocks, e) is e[0]
    e[0].in_flight = 4  # mean 1.33: 2.67 above it: the less loaded of two instead
    assert all(pa.pick(blocks, e) is not e[0] for _ in range(50))


def test_prefix_index_is_bounded_and_forgets_gone_endpoints():
    pa, e = PrefixAffinity(block=4, capacity=5), eps(0, 0)
    pa.served(block_hashes("a" * 40, 4), e[0])  # 10 blocks into 5 places: the oldest go
    assert len(pa.index) == 5
    pa.forget(e[0].url)
    assert not pa.index and pa.longest(block_hashes("a" * 40, 4), e) == (None, 0)


def test_unknown_strategy_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="least-load, prefix-cache, queue-aware, round-robin"):
        balance.make("random")


def test_a_busy_holder_gives_way_to_the_next_longest_prefix_before_random_choice():
    pa, e = PrefixAffinity(block=10, max_imbalance=1, seed=3), eps(0, 0, 0, 0)
    blocks = block_hashes("x" * 100, 10)
    pa.served(blocks[:3], e[1])  # holds 3 blocks
    pa.served(blocks, e[0])  # holds all 10 (and the first 3 move to it too)
    pa.served(blocks[:5], e[2])  # now holds the first 5
    assert pa.matches(blocks, e) == {e[0].url: 10, e[2].url: 5}
    e[0].in_flight = 4  # mean 1: too busy
    assert all(pa.pick(blocks, e) is e[2] for _ in range(20))
