"""The claim loop's decisions (:class:`ClaimPlan`), checked on their own against
generated sequences of what the loop sees: held work, full endpoints, claims'
results, wake-ups, retries and the passing of time."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook_plugin.delivery.claims import Claim, ClaimPlan, Wait

AGENTS = st.sampled_from(["a", "b", "c"])
POLL = 1.0

# one thing that happens to the loop between two decisions
EVENTS = st.one_of(
    st.tuples(st.just("wake")),
    st.tuples(st.just("waited")),
    st.tuples(st.just("freed"), AGENTS),
    st.tuples(st.just("retry"), st.floats(0, 5)),
    st.tuples(st.just("tick"), st.floats(0, 2)),
    st.tuples(
        st.just("decide"),
        st.integers(0, 20),  # ready
        st.integers(0, 30),  # parked and in flight
        st.frozensets(AGENTS),  # full
        st.integers(0, 300),  # what a claim would find
    ),
)


def plan() -> ClaimPlan:
    return ClaimPlan(concurrency=8, batch=12, poll_interval=POLL)


@settings(max_examples=400)
@given(st.lists(EVENTS, max_size=60))
def test_every_decision_keeps_the_rules(events: list[tuple[object, ...]]) -> None:
    p, now = plan(), 100.0
    for event in events:
        kind = event[0]
        if kind == "wake":
            p.woken()
        elif kind == "waited":
            p.waited()
        elif kind == "freed":
            p.freed(str(event[1]))
        elif kind == "retry":
            p.retry_at(now + float(event[1]))  # type: ignore[arg-type]
        elif kind == "tick":
            now += float(event[1])  # type: ignore[arg-type]
        else:
            _, ready, other, full, found = event
            assert isinstance(ready, int) and isinstance(other, int) and isinstance(found, int)
            retry_due = p.next_retry_at is not None and p.next_retry_at <= now
            step = p.next(ready=ready, held=ready + other, full=full, now=now, mono=now)  # type: ignore[arg-type]
            if isinstance(step, Wait):
                # never longer than a poll, never negative
                assert 0 <= step.seconds <= POLL
                # a full round ready to start, or no retry due that we know of
                assert ready >= 8 or not retry_due
            else:
                # only below one round ready; never more than a batch; never
                # less than what brings one round ready; endpoints full are left out
                assert ready < 8
                assert 1 <= step.limit <= 12
                assert step.limit >= min(12, 8 - ready)
                assert ready + other + step.limit <= max(16, ready + other + 8 - ready)
                assert set(step.skip) == set(full)
                assert p.next_retry_at is None or p.next_retry_at > now  # it looks for it
                p.claimed(step, min(found, step.limit), mono=now)


def test_a_claim_that_found_less_than_it_asked_waits_until_woken() -> None:
    p = plan()
    step = p.next(ready=0, held=0, full=(), now=0.0, mono=0.0)
    assert step == Claim(12, (), 0)
    p.claimed(step, 3, mono=0.0)
    assert p.next(ready=3, held=3, full=(), now=0.0, mono=0.0) == Wait(POLL)
    p.waited()  # a wake-up, a free slot or the poll interval
    assert isinstance(p.next(ready=3, held=3, full=(), now=0.0, mono=0.0), Claim)


def test_a_retry_falling_due_is_claimed_for_though_the_last_claim_found_nothing() -> None:
    p = plan()
    p.claimed(p.next(ready=0, held=0, full=("a",), now=0.0, mono=0.0), 0, mono=0.0)  # type: ignore[arg-type]
    assert p.retry_at(0.3)
    assert p.next(ready=0, held=0, full=("a",), now=0.1, mono=0.1) == Wait(pytest.approx(0.2))
    step = p.next(ready=0, held=0, full=("a",), now=0.3, mono=0.3)
    assert isinstance(step, Claim) and step.skip == ("a",)
    assert p.next_retry_at is None


def test_a_claim_that_left_out_full_endpoints_and_found_nothing_is_not_repeated() -> None:
    """Until a wake-up or a poll interval: each would read every row they have
    waiting for nothing."""
    p = plan()
    step = p.next(ready=0, held=10, full=("a",), now=0.0, mono=0.0)
    assert isinstance(step, Claim)
    p.claimed(step, 0, mono=0.0)
    p.waited()
    assert p.next(ready=0, held=10, full=("a", "b"), now=0.5, mono=0.5) == Wait(0.5)
    p.waited()
    assert isinstance(p.next(ready=0, held=10, full=("b",), now=0.5, mono=0.5), Claim)
    p.woken()
    assert isinstance(p.next(ready=0, held=10, full=("a",), now=0.5, mono=0.5), Claim)


def test_a_wake_up_during_a_claim_that_finds_nothing_is_not_lost() -> None:
    p = plan()
    step = p.next(ready=0, held=10, full=("a",), now=0.0, mono=0.0)
    assert isinstance(step, Claim)
    p.woken()  # another process queued work the claim did not see
    p.claimed(step, 0, mono=0.0)
    p.waited()
    assert isinstance(p.next(ready=0, held=10, full=("a",), now=0.0, mono=0.0), Claim)


def test_an_endpoint_left_out_that_frees_a_slot_is_claimed_for() -> None:
    p = plan()
    step = p.next(ready=0, held=10, full=("a",), now=0.0, mono=0.0)
    assert isinstance(step, Claim)
    p.claimed(step, 2, mono=0.0)
    assert not p.freed("b")  # not one the claim left out
    assert p.freed("a") and not p.drained
    assert not p.freed("a")  # once


def test_up_to_one_round_is_claimed_whatever_full_endpoints_hold_parked() -> None:
    p = plan()
    step = p.next(ready=0, held=40, full=("slow",), now=0.0, mono=0.0)
    assert step == Claim(8, ("slow",), 0)
    assert p.next(ready=8, held=40, full=(), now=0.0, mono=0.0) == Wait(POLL)


def test_a_low_backlog_asks_for_more_only_when_a_claim_could_find_some() -> None:
    """Not while a claim is under way (its result is looked at next anyway),
    nor after one found all there was: a wake-up left then would only make the
    loop ask again for nothing."""
    p = plan()
    assert p.wants_more
    step = p.next(ready=0, held=0, full=(), now=0.0, mono=0.0)
    assert isinstance(step, Claim) and not p.wants_more
    p.claimed(step, 3, mono=0.0)
    assert not p.wants_more  # all there was
    p.waited()
    assert p.wants_more
    step = p.next(ready=0, held=0, full=(), now=0.0, mono=0.0)
    assert isinstance(step, Claim)
    p.next(ready=8, held=8, full=(), now=0.0, mono=0.0)  # the claim failed; the loop goes on
    assert p.wants_more


def test_an_endpoint_the_claim_under_way_leaves_out_that_frees_is_claimed_for_after_it() -> None:
    """It was full when the claim was decided, and frees while the claim runs:
    its work waits in the store, so the loop looks again once the claim is
    back (and the claim finding nothing is no proof of barrenness)."""
    p = plan()
    step = p.next(ready=0, held=4, full=("a",), now=0.0, mono=0.0)
    assert isinstance(step, Claim) and step.skip == ("a",)
    assert not p.freed("b")  # not left out
    assert p.freed("a")
    p.claimed(step, 0, mono=0.0)
    p.waited()
    assert p.barren is None
    assert isinstance(p.next(ready=0, held=0, full=(), now=0.0, mono=0.0), Claim)
