"""Headers are checked when saved: what HTTP cannot carry is refused, never quoted.

A header an agent owner types is sent with every webhook (``header``) or
user-info lookup (``userInfoHeader``). A value HTTP/1.1 cannot carry would
fail every attempt later, so it is refused at save time, with an error that
names the field and says how to fix it but quotes no part of the line: a
misplaced colon can put the secret into what looks like the name.
"""

from __future__ import annotations

import string
from pathlib import Path

import httpx
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from webhook_plugin import SettingsError, WebhookSettings
from webhook_plugin.runtime import WebhookMiddleware, create_app
from webhook_plugin.runtime.config import parse_config
from webhook_plugin.settings import parse_header, validate_url

FIELDS = ("header", "userInfoHeader")
VISIBLE = {chr(c) for c in range(0x21, 0x7F)}
TOKEN_CHARS = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits


def refusal(line: str, field: str = "header") -> SettingsError:
    with pytest.raises(SettingsError) as info:
        parse_header(line, field)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    return info.value


# -- named regressions -------------------------------------------------------------------------


@pytest.mark.parametrize("field", FIELDS)
def test_non_ascii_value_is_refused_without_quoting_it(field: str) -> None:
    # used to be saved, then failed every attempt with UnicodeEncodeError
    error = refusal("X-Api-Key: ключ", field)
    assert "ключ" not in str(error)
    assert "ASCII" in error.message


@pytest.mark.parametrize("field", FIELDS)
def test_space_in_name_is_refused_without_quoting_name_or_value(field: str) -> None:
    # the colon is missing after the name, so the "name" holds the secret
    error = refusal("X-Key Bearer SECRET: x", field)
    for part in ("SECRET", "Bearer", "X-Key"):
        assert part not in str(error)
    assert "'Name: value'" in error.message


def test_missing_colon_is_refused_without_quoting_the_line() -> None:
    error = refusal("Authorization Bearer s3cr3t-TOKEN")
    for part in ("s3cr3t", "TOKEN", "Bearer", "Authorization"):
        assert part not in str(error)


@pytest.mark.parametrize(
    "line",
    [
        "X-Key: abc\x00def",
        "X-Key: abc\x7fdef",
        "X-Key: abc\x1bdef",
        "X-Key: abc\x0bdef",
        "X-Key: abc\x1fdef",
        "X-Key: abc\x0cdef",
        "X-Key: abcdef\x00",
        "X\x00Key: abcdef",
    ],
    ids=["NUL", "DEL", "ESC", "VT", "US", "FF", "trailing NUL", "NUL in name"],
)
def test_control_characters_are_refused(line: str) -> None:
    error = refusal(line)
    assert "control characters" in error.message
    assert "abc" not in str(error) and "def" not in str(error)


@pytest.mark.parametrize(
    "line",
    ["X-Key: abc\r\ndef", "X-Key: abc\ndef", "X-Key: abc\rdef", "X-Key:\r\n abcdef"],
)
def test_line_breaks_are_refused(line: str) -> None:
    error = refusal(line)
    assert "line breaks" in error.message
    assert "abc" not in str(error)


@pytest.mark.parametrize(
    "line",
    [
        "X-Key: caf\u00e9-token",  # é, latin-1
        "X-Key: abc\u00a0def",  # no-break space
        "X-Key: abc\u2003def",  # em space
        "X-Key: token\u200b",  # zero-width space
        "X-Key: \U0001f511-token",
    ],
)
def test_non_ascii_letters_and_spaces_are_refused(line: str) -> None:
    error = refusal(line)
    assert "ASCII" in error.message


@pytest.mark.parametrize("line", ["X-Ke\u00fd: v", "X Key: v", "X-Key\t2: v", "X(Key): v"])
def test_name_must_be_a_token(line: str) -> None:
    error = refusal(line)
    assert "letters, digits and -" in error.message
    assert "Key" not in str(error)


def test_forbidden_names_are_not_quoted_either() -> None:
    error = refusal("Webhook-Signature: v1,forged")
    assert "set by webhook-plugin" in error.message
    assert "forged" not in str(error) and "Webhook-Signature" not in str(error)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Authorization: Bearer abc", ("Authorization", "Bearer abc")),
        ("  X-Api-Key:\tk-123 \t", ("X-Api-Key", "k-123")),  # OWS around name and value
        ("X-Key: a\tb  c", ("X-Key", "a\tb  c")),  # spaces and tabs between visible chars
        ("X-Key : v", ("X-Key", "v")),
        ("X-Key: a:b:c", ("X-Key", "a:b:c")),
        ('X-Key: !"#~', ("X-Key", '!"#~')),
    ],
)
def test_valid_headers_pass(line: str, expected: tuple[str, str]) -> None:
    assert parse_header(line) == expected


def test_validated_settings_refuse_a_non_ascii_user_info_header() -> None:
    with pytest.raises(SettingsError) as info:
        WebhookSettings.validated(url="https://x.example/", user_info_header="X-Api-Key: ключ")
    assert info.value.field == "userInfoHeader"
    assert "ключ" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "https://alice:pa55word@example.com/hook",
        "https://pa55word@example.com/hook",
        "https://alice:pa55word@example.com:99999/hook",
        "https://example.com:pa55word/hook",  # a secret where the port belongs
        "https://alice:pa55word@[::1/hook",
    ],
)
def test_url_errors_never_quote_credentials(url: str) -> None:
    with pytest.raises(SettingsError) as info:
        validate_url(url)
    assert "pa55word" not in str(info.value) and "alice" not in str(info.value)


# -- property --------------------------------------------------------------------------------


# Letters and digits swapped for others of their kind (rot13, rot5), any other non-ASCII
# character for another: the line stays exactly as valid or invalid, so a message that
# quotes no part of the value cannot change.
_ROT = str.maketrans(
    string.ascii_letters + string.digits,
    string.ascii_lowercase[13:]
    + string.ascii_lowercase[:13]
    + string.ascii_uppercase[13:]
    + string.ascii_uppercase[:13]
    + string.digits[5:]
    + string.digits[:5],
)


def disguise(value: str) -> str:
    value = value.translate(_ROT)
    return "".join(c if c < "\x80" else "\u00fc" if c == "\u00e9" else "\u00e9" for c in value)


@given(name=st.text(TOKEN_CHARS, min_size=1, max_size=20), value=st.text(max_size=60))
@example(name="X-Api-Key", value="ключ")
@example(name="X-Key", value="Bearer s3cr3t\x00")
@example(name="X-Key", value="Bearer s3cr3t\x7f")
@example(name="X-Key", value="Bearer\r\nX-Injected: 1")
@example(name="Webhook-Id", value="webhook-plugin")
def test_header_is_sendable_or_refused_without_quoting(name: str, value: str) -> None:
    try:
        parsed_name, parsed_value = parse_header(f"{name}: {value}")
    except SettingsError as exc:
        assert exc.field == "header"
        with pytest.raises(SettingsError) as other:
            parse_header(f"{name}: {disguise(value)}")
        # The message does not depend on the value. (Asking that no 4 characters of the value
        # appear in it is flaky: hypothesis soon tries "Webhook-Id: webhook-plugin".)
        assert str(other.value) == str(exc)
    else:
        assert parsed_name == name
        assert parsed_value == value.strip(" \t")
        parsed_value.encode("ascii")  # what HTTP/1.1 carries
        assert parsed_value[0] in VISIBLE and parsed_value[-1] in VISIBLE
        assert set(parsed_value) <= VISIBLE | {" ", "\t"}


# -- the HTTP API --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_api_answers_400_naming_the_field_without_the_value(tmp_path: Path) -> None:
    config = parse_config({"runtime": {"database": f"sqlite:///{tmp_path / 'api.db'}"}})
    app = create_app(config, workers=False)
    assert isinstance(app, WebhookMiddleware)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.running(),
        httpx.AsyncClient(transport=transport, base_url="http://localhost") as api,
    ):
        r = await api.put(
            "/v1/agents/support/webhook",
            json={"url": "https://hooks.example.com/chat", "header": "X-Api-Key: ключ"},
        )
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "invalid_settings"
        assert error["message"].startswith("header: ")
        assert "ключ" not in r.text
        r = await api.put(
            "/v1/agents/support/webhook",
            json={"url": "https://hooks.example.com/chat", "userInfoHeader": "X-Key Bearer SECRET"},
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_settings"
        assert r.json()["error"]["message"].startswith("userInfoHeader: ")
        assert "SECRET" not in r.text and "Bearer" not in r.text
        assert (await api.get("/v1/agents/support/webhook")).status_code == 404  # nothing saved
