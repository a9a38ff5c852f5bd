"""The runtime's one way to write a time, for answers and for tables."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from webhook_plugin.runtime.timestamps import human, iso


def test_iso_and_human() -> None:
    assert iso(1764590405.123456) == "2025-12-01T12:00:05.123456Z"
    assert iso(1764590405.123456, "milliseconds") == "2025-12-01T12:00:05.123Z"
    assert human(1764590405.9) == "2025-12-01 12:00:05 UTC"
    assert human(1764590405.9, zone=False) == "2025-12-01 12:00:05"


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**70), 2**70))
def test_any_stored_number_still_renders(value: float) -> None:
    # rows written before times were bounded may hold anything
    text = iso(value)
    assert text.endswith("Z") and len(text) >= 20
    assert human(value).endswith(" UTC")
    if not (isinstance(value, float) and (math.isnan(value) or math.isinf(value))):
        assert text[:4].isdigit()
