"""The delivery config: every knob settable from TOML, every number finite and bounded.

The knobs are read from :class:`DeliveryConfig` itself, so a knob added there
is tested here without a word changed; one that TOML cannot set fails.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec import inspect

from helpers import ROOT
from webhook_plugin import ConfigError
from webhook_plugin.delivery.config import DeliveryConfig
from webhook_plugin.delivery.engine import DeliveryConfig as FromEngine
from webhook_plugin.delivery.engine import DeliveryEngine
from webhook_plugin.runtime.config import load_config
from webhook_plugin.storage.sqlite import SQLiteStore

CLI = [sys.executable, "-m", "webhook_plugin.cli"]
INF = float("inf")
NAN = float("nan")

#: each knob's type, with its bounds
TYPES: dict[str, inspect.Type] = {
    f.name: f.type
    for f in inspect.type_info(DeliveryConfig).fields  # type: ignore[attr-defined]
}
DEFAULT = DeliveryConfig()
#: a process role, chosen by the command, not by the config file
NOT_IN_TOML = {"workers"}
NUMBERS = (inspect.FloatType, inspect.IntType)
#: the numeric knobs; retry_schedule's bounds are its items'
NUMERIC = sorted(
    name
    for name, t in TYPES.items()
    if isinstance(t, NUMBERS)
    or (isinstance(t, inspect.VarTupleType) and isinstance(t.item_type, NUMBERS))
)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # inf, -inf and nan are TOML too
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(toml_value(v) for v in value) + "]"


def load_webhook(tmp_path: Path, **knobs: Any) -> DeliveryConfig:
    path = tmp_path / "webhook-plugin.toml"
    body = "".join(f"{name} = {toml_value(value)}\n" for name, value in knobs.items())
    path.write_text(f"[webhook]\n{body}", encoding="utf-8")
    return load_config(path).delivery()


def bounds(t: inspect.FloatType | inspect.IntType) -> tuple[float, float]:
    """The smallest and the largest value the type takes (every knob has both)."""
    lo = t.ge if t.ge is not None else t.gt
    hi = t.le if t.le is not None else (t.lt / 2 if t.lt is not None else None)
    assert lo is not None and hi is not None, f"{t} needs a lower and an upper bound"
    return lo, hi


def within(t: inspect.FloatType | inspect.IntType, value: float) -> bool:
    if isinstance(t, inspect.IntType) and isinstance(value, float | bool):
        return False  # TOML's 5.0 is a float, and an int knob wants an int
    v = float(value)
    return (
        math.isfinite(v)
        and (t.ge is None or v >= t.ge)
        and (t.gt is None or v > t.gt)
        and (t.le is None or v <= t.le)
        and (t.lt is None or v < t.lt)
    )


def other_value(name: str) -> Any:
    """A valid value for knob ``name`` that is not its default."""
    t, default = TYPES[name], getattr(DEFAULT, name)
    if isinstance(t, inspect.UnionType):  # "X or None": the X
        t = next(x for x in t.types if not isinstance(x, inspect.NoneType))
    if isinstance(t, NUMBERS):
        candidates: list[Any] = list(bounds(t))
    elif isinstance(t, inspect.VarTupleType) and isinstance(t.item_type, inspect.StrType):
        candidates = [("10.0.0.0/8", "127.0.0.1")]
    elif isinstance(t, inspect.VarTupleType) and isinstance(t.item_type, NUMBERS):
        candidates = [bounds(t.item_type)]
    elif isinstance(t, inspect.BoolType):
        candidates = [not default]
    else:
        pytest.fail(f"{name}: teach other_value() a value of type {t}")
    return next(c for c in candidates if c != default)


# -- every knob can be set from TOML --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(set(TYPES) - NOT_IN_TOML))
def test_every_knob_can_be_set_from_toml(tmp_path: Path, name: str) -> None:
    value = other_value(name)
    assert getattr(load_webhook(tmp_path, **{name: value}), name) == value


def test_every_knob_is_either_in_toml_or_named_as_not() -> None:
    fields = {f.name for f in msgspec.structs.fields(DeliveryConfig)}
    assert NOT_IN_TOML <= fields
    assert "settings_refresh" in fields and "purge_interval" in fields  # once unreachable


def test_an_empty_webhook_table_gives_the_defaults(tmp_path: Path) -> None:
    assert load_webhook(tmp_path) == DeliveryConfig() == load_config(None).delivery()


def test_workers_is_chosen_by_the_command_not_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"webhook\.workers"):
        load_webhook(tmp_path, workers=False)
    config = load_config(None)
    assert config.delivery().workers is True
    assert config.delivery(workers=False).workers is False


def test_the_readme_lists_every_knob() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [n for n in sorted(set(TYPES) - NOT_IN_TOML) if f"| `{n}` |" not in readme]
    assert not missing, f"README's [webhook] table lacks {missing}"


def test_the_engine_module_still_exports_the_config() -> None:
    assert FromEngine is DeliveryConfig


# -- bad values are refused, naming the key --------------------------------------------------------


@pytest.mark.parametrize(
    ("knobs", "named"),
    [
        ({"timeout": INF}, "webhook.timeout"),
        ({"timeout": NAN}, "webhook.timeout"),
        ({"timeout": -1}, "webhook.timeout"),
        ({"timeout": 0}, "webhook.timeout"),
        ({"timeout": "fast"}, "webhook.timeout"),
        ({"retry_schedule": [INF]}, "webhook.retry_schedule[0]"),
        ({"retry_schedule": [0, NAN]}, "webhook.retry_schedule[1]"),
        ({"retry_schedule": [0, -5]}, "webhook.retry_schedule[1]"),
        ({"retry_schedule": []}, "webhook.retry_schedule"),
        ({"retry_schedule": [0] * 51}, "webhook.retry_schedule"),
        ({"jitter": 1.0}, "webhook.jitter"),
        ({"jitter": -INF}, "webhook.jitter"),
        ({"disable_after": INF}, "webhook.disable_after"),
        ({"concurrency": 20_000_000}, "webhook.concurrency"),
        ({"concurrency": 0}, "webhook.concurrency"),
        ({"concurrency": 4.0}, "webhook.concurrency"),
        ({"per_endpoint_concurrency": -1}, "webhook.per_endpoint_concurrency"),
        ({"poll_interval": 1e-9}, "webhook.poll_interval"),
        ({"poll_interval": 0}, "webhook.poll_interval"),
        ({"shutdown_grace": INF}, "webhook.shutdown_grace"),
        ({"settings_refresh": 1e-9}, "webhook.settings_refresh"),
        ({"settings_refresh": NAN}, "webhook.settings_refresh"),
        ({"retention": INF}, "webhook.retention"),
        ({"purge_interval": 0}, "webhook.purge_interval"),
        ({"user_info_timeout": INF}, "webhook.user_info_timeout"),
        ({"user_info_ttl": -1}, "webhook.user_info_ttl"),
        ({"user_info_max_bytes": 2**40}, "webhook.user_info_max_bytes"),
        ({"secret_rotation_grace": NAN}, "webhook.secret_rotation_grace"),
        ({"workers": True}, "webhook.workers"),
        ({"timout": 3}, "`timout`"),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else None,
)
def test_bad_values_are_refused_naming_the_key(
    tmp_path: Path, knobs: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_webhook(tmp_path, **knobs)
    assert named in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"timeout": INF}, "webhook.timeout: Expected `float` <= 300.0"),
        ({"retry_schedule": (0, INF)}, "webhook.retry_schedule[1]: Expected `float` <= 604800.0"),
        ({"poll_interval": 1e-9}, "webhook.poll_interval: Expected `float` >= 0.01"),
        ({"concurrency": 20_000_000}, "webhook.concurrency: Expected `int` <= 1024"),
        ({"user_info_timeout": NAN}, "webhook.user_info_timeout"),
        ({"settings_refresh": 0.001}, "webhook.settings_refresh"),
        ({"workers": "yes"}, "webhook.workers: Expected `bool`"),
    ],
)
def test_a_config_built_in_python_is_held_to_the_same_bounds(
    knobs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        DeliveryConfig(**knobs)
    assert message in str(info.value)
    with pytest.raises(ConfigError):
        msgspec.structs.replace(DeliveryConfig(), **knobs)


def test_the_engine_refuses_an_endless_timeout(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"webhook\.timeout"):
        DeliveryEngine(SQLiteStore(str(tmp_path / "x.db")), DeliveryConfig(timeout=INF))


def test_a_config_built_in_python_is_normalised() -> None:
    config = DeliveryConfig(allow_private_hosts=["127.0.0.1"], retry_schedule=[0, 1], timeout=5)
    assert config.allow_private_hosts == ("127.0.0.1",)
    assert config.retry_schedule == (0.0, 1.0)
    assert isinstance(config.timeout, float)
    hash(config)  # frozen, hashable


numbers = (
    st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, 0.0, -0.0, 1e-9, 0.01, 0.1, 1, 60, 300, 1024, 86400, 2**31])
)


@given(name=st.sampled_from(NUMERIC), value=numbers)
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_any_number_is_accepted_in_bounds_or_refused_by_name(
    tmp_path: Path, name: str, value: float
) -> None:
    t = TYPES[name]
    is_list = isinstance(t, inspect.VarTupleType)
    item_type = t.item_type if is_list else t  # type: ignore[attr-defined]
    try:
        config = load_webhook(tmp_path, **{name: [value] if is_list else value})
    except ConfigError as exc:
        assert f"webhook.{name}" in str(exc), str(exc)
        accepted = False
    else:
        got = getattr(config, name)
        assert got == ((value,) if is_list else value)
        accepted = True
    expected = within(item_type, value)
    if name == "settings_refresh":  # 0 is "never"; else at least 0.1 s
        expected = expected and (value == 0 or value >= 0.1)
    assert accepted == expected, (name, value)


# -- the command line -----------------------------------------------------------------------------


def test_serve_refuses_an_endless_timeout_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[webhook]\ntimeout = inf\n", encoding="utf-8")
    start = time.monotonic()
    r = subprocess.run(
        [*CLI, "serve", "--config", str(path), "--port", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert r.returncode == 2, r.stderr[-1500:]
    assert "webhook.timeout" in r.stderr and "300" in r.stderr, r.stderr[-1500:]
    assert time.monotonic() - start < 20
