"""Per-endpoint caps and lanes: endpoints that time out lose slots and share a
bounded part of the pool; quick ones win their slots back."""

from __future__ import annotations

from webhook_plugin.delivery.lanes import EndpointLanes


def lanes(**kw: int) -> EndpointLanes:
    return EndpointLanes(**{"ceiling": 16, "start": 4, "slow_slots": 3, "new_slots": 5, **kw})


def test_a_new_endpoint_probes_then_grows_with_quick_attempts() -> None:
    lns = lanes()
    assert lns.lane("a") == "new" and lns.may_start("a", 0) and not lns.may_start("a", 1)
    lns.observe("a", slow=False)
    assert lns.may_start("a", 4) and not lns.may_start("a", 5)
    for _ in range(50):
        lns.observe("a", slow=False)
    assert lns.lane("a") == "quick" and lns.cap("a") == 16


def test_timeouts_halve_the_cap_down_to_one() -> None:
    lns = lanes()
    lns.observe("hang", slow=True)
    assert lns.cap("hang") == 2 and lns.lane("hang") == "slow"
    for _ in range(5):
        lns.observe("hang", slow=True)
    assert lns.cap("hang") == 1 and lns.may_start("hang", 0)
    lns.observe("hang", slow=False)  # it answered quickly: no longer slow
    assert lns.lane("hang") == "quick" and lns.cap("hang") == 2


def test_slow_and_new_endpoints_share_bounded_slots_quick_ones_do_not() -> None:
    lns = lanes()
    for name in ("s1", "s2"):
        lns.observe(name, slow=True)
    lns.observe("q", slow=False)
    lns.busy["slow"], lns.busy["new"] = 3, 5
    assert not lns.may_start("s2", 0)  # the slow share is taken
    assert not lns.may_start("brand-new", 0)  # so is the new one
    assert lns.may_start("q", 0)  # a quick endpoint is not affected
    lns.busy["slow"] = 2
    assert lns.may_start("s2", 0)


def test_endpoints_back_at_the_start_are_forgotten() -> None:
    lns = lanes()
    lns.observe("a", slow=True)
    lns.observe("a", slow=False)
    lns.observe("a", slow=False)
    assert lns.cap("a") == 4 and not lns._caps
