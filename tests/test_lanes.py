"""Per-endpoint caps and lanes: endpoints that time out lose slots and share a
bounded part of the pool; quick ones win their slots back."""

from __future__ import annotations

from webhook_plugin.delivery.lanes import EndpointLanes


def lanes(**kw: int) -> EndpointLanes:
    return EndpointLanes(**{"ceiling": 16, "start": 4, "slow_slots": 3, "new_slots": 5, **kw})


def test_a_new_endpoint_probes_then_grows_with_quick_attempts() -> None:
    l = lanes()
    assert l.lane("a") == "new" and l.may_start("a", 0) and not l.may_start("a", 1)
    l.observe("a", slow=False)
    assert l.may_start("a", 4) and not l.may_start("a", 5)
    for _ in range(50):
        l.observe("a", slow=False)
    assert l.lane("a") == "quick" and l.cap("a") == 16


def test_timeouts_halve_the_cap_down_to_one() -> None:
    l = lanes()
    l.observe("hang", slow=True)
    assert l.cap("hang") == 2 and l.lane("hang") == "slow"
    for _ in range(5):
        l.observe("hang", slow=True)
    assert l.cap("hang") == 1 and l.may_start("hang", 0)
    l.observe("hang", slow=False)  # it answered quickly: no longer slow
    assert l.lane("hang") == "quick" and l.cap("hang") == 2


def test_slow_and_new_endpoints_share_bounded_slots_quick_ones_do_not() -> None:
    l = lanes()
    for name in ("s1", "s2"):
        l.observe(name, slow=True)
    l.observe("q", slow=False)
    l.busy["slow"], l.busy["new"] = 3, 5
    assert not l.may_start("s2", 0)  # the slow share is taken
    assert not l.may_start("brand-new", 0)  # so is the new one
    assert l.may_start("q", 0)  # a quick endpoint is not affected
    l.busy["slow"] = 2
    assert l.may_start("s2", 0)


def test_endpoints_back_at_the_start_are_forgotten() -> None:
    l = lanes()
    l.observe("a", slow=True)
    l.observe("a", slow=False)
    l.observe("a", slow=False)
    assert l.cap("a") == 4 and not l._caps
