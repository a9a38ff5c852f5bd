from __future__ import annotations

import pytest

from webhook_plugin import SettingsError, WebhookEventType, WebhookSettings
from webhook_plugin.settings import (
    generate_secret,
    mask_header,
    parse_header,
    secret_key,
    validate_url,
)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/hook", "http:// or https://"),
        ("example.com/hook", "http:// or https://"),
        ("http:///path-only", "no host"),
        ("https://user:pw@example.com/", "credentials"),
        ("https://example.com/a b", "spaces or control"),
        ("https://example.com/\nx", "spaces or control"),
        ("https://example.com:99999/", "not a valid URL"),
        ("https://example.com/#frag", "fragment"),
        ("https://example.com/\udcff", "lone surrogate"),
        ("https://example.com/" + "a" * 2100, "longer than 2048"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message) as info:
        validate_url(url)
    assert info.value.field == "url"


def test_good_urls_pass() -> None:
    for url in (
        "https://hooks.example.com/chat",
        "http://127.0.0.1:8080/x?y=1",
        "https://[2001:db8::1]/",
    ):
        assert validate_url(url) == url


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("Authorization Bearer abc", "Name: value"),
        (": s3cret", "Name: value"),
        ("X Api Key: k", "characters a header name cannot"),
        ("X-Key: a\r\nX-Injected: 1", "line breaks"),
        ("X-Key: a\nb", "line breaks"),
        ("X-Key:", "empty value"),
        ("Host: evil.example", "set by webhook-plugin"),
        ("webhook-signature: v1,forged", "set by webhook-plugin"),
        ("X-Key: " + "k" * 5000, "longer than 4096"),
    ],
)
def test_bad_headers_say_what_is_wrong_without_quoting_the_value(header: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message) as info:
        parse_header(header)
    value = header.partition(":")[2].strip()
    if len(value) > 3:
        assert value not in str(info.value)


def test_header_is_split_and_masked() -> None:
    assert parse_header("Authorization: Bearer abc") == ("Authorization", "Bearer abc")
    assert mask_header("Authorization: Bearer abc") == "Authorization: ****"
    assert mask_header(None) is None


def test_event_filter_accepts_only_known_types() -> None:
    s = WebhookSettings.validated(url="https://x.example/", events=["AGENT_USER_MESSAGE"])
    assert s.events == frozenset({WebhookEventType.AGENT_USER_MESSAGE})
    with pytest.raises(SettingsError, match="unknown event type.*'AGENT_MESSAGE_SENT'.*known:"):
        WebhookSettings.validated(url="https://x.example/", events=["AGENT_MESSAGE_SENT"])
    with pytest.raises(SettingsError, match="list"):
        WebhookSettings.validated(url="https://x.example/", events="AGENT_USER_MESSAGE")  # type: ignore[arg-type]


def test_secret_is_validated_and_left_unset_when_not_given() -> None:
    # unset: the engine keeps the agent's current secret, or generates one
    assert WebhookSettings.validated(url="https://x.example/").signing_secret is None
    assert len(secret_key(generate_secret())) == 32
    with pytest.raises(SettingsError, match="whsec_"):
        WebhookSettings.validated(url="https://x.example/", signing_secret="abc")
    with pytest.raises(SettingsError, match="base64"):
        WebhookSettings.validated(url="https://x.example/", signing_secret="whsec_***")


def test_wants() -> None:
    s = WebhookSettings.validated(url="https://x.example/", events=["AGENT_MESSAGE_NOTED"])
    assert s.wants(WebhookEventType.AGENT_MESSAGE_NOTED)
    assert not s.wants(WebhookEventType.AGENT_USER_MESSAGE)
    assert not WebhookSettings().wants(WebhookEventType.AGENT_MESSAGE_NOTED)  # no URL


def test_public_view_masks_headers_and_hides_the_secret() -> None:
    s = WebhookSettings.validated(
        url="https://x.example/",
        header="Authorization: Bearer abc",
        user_info_url="https://crm.example/",
        user_info_header="X-Api-Key: k123",
        signing_secret=generate_secret(),
    )
    assert s.signing_secret is not None
    public = s.public()
    assert public["header"] == "Authorization: ****"
    assert public["userInfoHeader"] == "X-Api-Key: ****"
    assert "abc" not in repr(public) and "k123" not in repr(public)
    assert "signingSecret" not in public and s.signing_secret not in repr(public)


def test_international_host_names_must_be_valid_idna() -> None:
    assert validate_url("https://bücher.example/hook") == "https://bücher.example/hook"
    with pytest.raises(SettingsError, match="IDNA"):
        validate_url("https://a\u200db.example/")


def test_the_repr_never_shows_a_header_value_or_a_secret() -> None:
    """Tracebacks, debuggers and rich's locals panels show reprs."""
    s = WebhookSettings.validated(
        url="https://h.example/",
        header="Authorization: Bearer t0p-s3cret",
        signing_secret=generate_secret(),
        user_info_url="https://crm.example/",
        user_info_header="X-Api-Key: k3y-s3cret",
    )
    text = repr(s)
    assert "https://h.example/" in text and "Authorization: ****" in text
    assert "s3cret" not in text and s.signing_secret not in text  # type: ignore[operator]
    assert "s3cret" not in str(list(s.__rich_repr__()))
