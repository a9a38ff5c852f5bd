"""Logs as ``webhook-plugin`` writes them: tracebacks, but never a secret.

Local variables of a failing delivery hold the agent's header value and its
signing secret. JSON logs carry tracebacks as structured data and console
logs as text; neither shows local variables.
"""

from __future__ import annotations

import io
import json
import secrets
import sys
from collections.abc import Callable, Iterator

import pytest
import structlog

from webhook_plugin.cli import configure_logging
from webhook_plugin.settings import generate_secret, parse_header, secret_key


@pytest.fixture
def stderr(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], str]]:
    """What ``configure_logging`` writes, its structlog configuration undone afterwards.

    ``configure_logging`` must be called in the test itself, where ``sys.stderr``
    is the capturing stream.
    """
    was_configured, saved = structlog.is_configured(), structlog.get_config()
    try:
        yield lambda: capsys.readouterr().err
    finally:
        structlog.reset_defaults()
        if was_configured:
            structlog.configure(**saved)


@pytest.fixture
def secret_values() -> tuple[str, str]:
    """A header and a signing secret made at run time: no source line shown holds them."""
    return f"Authorization: Bearer s3cr3t-{secrets.token_hex(12)}", generate_secret()


class ReceiverExploded(RuntimeError):
    pass


def _send(name: str, value: str, key: bytes) -> None:
    raise ReceiverExploded("the receiver went away")


def _deliver_with_secrets(header: str, signing_secret: str) -> None:
    name, value = parse_header(header)
    key = secret_key(signing_secret)
    _send(name, value, key)


def log_a_failed_delivery(header: str, signing_secret: str) -> None:
    log = structlog.get_logger("test_logging")
    try:
        _deliver_with_secrets(header, signing_secret)
    except ReceiverExploded:
        log.exception("delivery.internal_error", agent_id="support")


def assert_no_secret(output: str, header: str, signing_secret: str) -> None:
    value = header.partition(":")[2].strip()
    token = value.rpartition("-")[2]
    for secret in (value, token, signing_secret, signing_secret.removeprefix("whsec_")):
        assert secret not in output
    assert repr(secret_key(signing_secret))[2:-1] not in output


def test_json_logs_carry_a_structured_traceback_without_locals(
    stderr: Callable[[], str], secret_values: tuple[str, str]
) -> None:
    configure_logging("json")
    log_a_failed_delivery(*secret_values)
    output = stderr()
    [line] = output.splitlines()
    entry = json.loads(line)
    assert entry["event"] == "delivery.internal_error" and entry["level"] == "error"
    [stack] = entry["exception"]
    assert stack["exc_type"] == "ReceiverExploded"
    assert stack["exc_value"] == "the receiver went away"
    names = [frame["name"] for frame in stack["frames"]]
    assert names[-2:] == ["_deliver_with_secrets", "_send"]
    assert all("locals" not in frame for frame in stack["frames"])
    assert "exc_info" not in entry
    assert_no_secret(output, *secret_values)


@pytest.mark.parametrize("rich", [True, False], ids=["rich", "plain"])
def test_console_logs_show_the_traceback_without_locals(
    stderr: Callable[[], str],
    secret_values: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    rich: bool,
) -> None:
    if rich:
        pytest.importorskip("rich")  # in the test extra: this path must run in CI
    else:
        monkeypatch.setitem(sys.modules, "rich", None)  # import rich -> ImportError
    configure_logging("console")
    log_a_failed_delivery(*secret_values)
    output = stderr()
    assert "delivery.internal_error" in output
    assert "ReceiverExploded" in output and "the receiver went away" in output
    assert "_deliver_with_secrets" in output and "_send" in output
    assert ("─" in output) is rich  # rich draws a box around its tracebacks
    assert_no_secret(output, *secret_values)


def test_a_traceback_with_locals_would_show_the_secret(secret_values: tuple[str, str]) -> None:
    """The control: the tests above would catch locals being shown."""
    pytest.importorskip("rich")
    header, signing_secret = secret_values
    try:
        _deliver_with_secrets(header, signing_secret)
    except ReceiverExploded:
        exc_info = sys.exc_info()
    out = io.StringIO()
    structlog.dev.RichTracebackFormatter(color_system=None, show_locals=True)(out, exc_info)
    assert header.partition(":")[2].strip() in out.getvalue()
    [stack] = structlog.tracebacks.ExceptionDictTransformer(show_locals=True)(exc_info)
    assert signing_secret in json.dumps(stack)
