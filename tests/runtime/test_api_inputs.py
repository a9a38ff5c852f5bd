"""Every ``/v1`` input is bounded and checked: hostile bodies, ids and query
strings get a 4xx with the JSON error shape, never a 5xx.

The named regressions run on both backends; the property test (``-m fuzz``)
drives every route of :data:`webhook_plugin.runtime.api.routes.routes` with
generated input against the real app, in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from webhook_plugin.runtime.api.routes import routes
from webhook_plugin.runtime.app import create_app
from webhook_plugin.runtime.config import RuntimeConfig, RuntimeSection, WebhookSection

CLI = [sys.executable, "-m", "webhook_plugin.cli"]
HUGE = 2**64
AGENT = "support"
CONV = "conv-ok"


def _config(tmp: Path) -> RuntimeConfig:
    return RuntimeConfig(
        runtime=RuntimeSection(database=f"sqlite:///{tmp / 'x.db'}", load_entry_points=False),
        webhook=WebhookSection(
            allow_private_hosts=["127.0.0.1"],
            timeout=0.5,
            retry_schedule=[0, 0.05],
            jitter=0.0,
            poll_interval=0.05,
            shutdown_grace=0.5,
            user_info_timeout=0.3,
        ),
    )


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The real runtime app, its engine running, with one agent, conversation and delivery."""
    app: Any = create_app(_config(tmp_path))
    async with app.running():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            # a webhook URL nobody answers, so that a delivery row exists
            r = await c.put(f"/v1/agents/{AGENT}/webhook", json={"url": "http://127.0.0.1:9/h"})
            assert r.status_code == 200, r.text
            r = await c.post(
                f"/v1/agents/{AGENT}/messages",
                json={"conversationId": CONV, "channel": "web", "text": "hello"},
            )
            assert r.status_code == 200, r.text
            yield c


def assert_error(r: httpx.Response, status: int | None = None, code: str | None = None) -> None:
    assert r.status_code < 500, (r.status_code, r.text)
    if status is not None:
        assert r.status_code == status, (r.status_code, r.text)
    if r.status_code >= 400:
        body = r.json()
        assert isinstance(body, dict) and set(body) == {"error"}, body
        error = body["error"]
        assert isinstance(error, dict) and set(error) == {"code", "message"}, body
        assert isinstance(error["code"], str) and isinstance(error["message"], str), body
        assert error["message"], body
        if code is not None:
            assert error["code"] == code, body


# -- named regressions -------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "created_at",
    [
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "0001-01-01T00:00:00",
        "1969-12-31T23:59:59Z",
    ],
)
async def test_an_extreme_created_at_is_refused_and_the_inbox_still_opens(
    client: httpx.AsyncClient, created_at: str
) -> None:
    r = await client.post(
        f"/v1/agents/{AGENT}/messages",
        json={"conversationId": CONV, "channel": "web", "text": "hi", "createdAt": created_at},
    )
    assert_error(r, 400, "invalid_body")
    assert "createdAt" in r.json()["error"]["message"]
    inbox = await client.get(f"/v1/inbox/conversations/{CONV}")
    assert inbox.status_code == 200, inbox.text
    assert [m["text"] for m in inbox.json()["messages"] if m["author"] == "user"] == ["hello"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "created_at", ["1970-01-01T00:00:00Z", "2026-11-25T08:00:00-03:00", "2026-11-25T08:00:00"]
)
async def test_a_sane_created_at_is_stored(client: httpx.AsyncClient, created_at: str) -> None:
    r = await client.post(
        f"/v1/agents/{AGENT}/messages",
        json={"conversationId": "c2", "channel": "web", "text": "hi", "createdAt": created_at},
    )
    assert r.status_code == 200, r.text
    inbox = await client.get("/v1/inbox/conversations/c2")
    assert inbox.status_code == 200, inbox.text


@pytest.mark.anyio
async def test_an_unreadable_stored_timestamp_does_not_break_the_inbox(
    client: httpx.AsyncClient,
) -> None:
    # a row written before createdAt was bounded: year 1 in a +01:00 zone
    from webhook_plugin.runtime.chat import middleware

    app = client._transport.app  # type: ignore[attr-defined]
    pipeline = app.pipeline
    assert isinstance(pipeline, middleware.ChatPipeline)
    from webhook_plugin.runtime.chat.store import MessageRecord, MessageWrite

    for n, ts in enumerate((-62135600400.0, 253402300799.0 + 3600, -1e300, 1e300)):
        pipeline.store.write_messages(
            [
                MessageWrite(
                    messages=[
                        MessageRecord(
                            id=f"old-{n}",
                            conversation_id=CONV,
                            author="user",
                            text="from the past",
                            created_at=ts,
                            status="received",
                        )
                    ]
                )
            ]
        )
    inbox = await client.get(f"/v1/inbox/conversations/{CONV}")
    assert inbox.status_code == 200, inbox.text
    stamps = [m["createdAt"] for m in inbox.json()["messages"]]
    assert all(isinstance(s, str) and s.endswith("Z") for s in stamps), stamps


@pytest.mark.anyio
async def test_stored_rows_of_another_shape_do_not_break_the_inbox(
    client: httpx.AsyncClient,
) -> None:
    # a contact and attachments as another version (or a hand edit) may leave them
    app = client._transport.app  # type: ignore[attr-defined]
    db = app.pipeline.engine.store
    with db.transaction() as conn:
        db.execute(conn, "UPDATE conversations SET contact = ? WHERE id = ?", (b'{"n": 1}', CONV))
        db.execute(
            conn, "UPDATE messages SET attachments = ? WHERE conversation_id = ?", (b"{", CONV)
        )
    inbox = await client.get(f"/v1/inbox/conversations/{CONV}")
    assert inbox.status_code == 200, inbox.text
    assert inbox.json()["contact"] == {}


@pytest.mark.anyio
@pytest.mark.parametrize("delivery_id", [str(HUGE), str(2**63), "-1", "0", "1e3", "٣"])
async def test_a_delivery_id_out_of_range_is_not_found(
    client: httpx.AsyncClient, delivery_id: str
) -> None:
    base = f"/v1/agents/{AGENT}/webhook/deliveries/{quote(delivery_id)}"
    assert_error(await client.get(base), 404, "not_found")
    assert_error(await client.post(base + "/redeliver"), 404, "not_found")


@pytest.mark.anyio
@pytest.mark.parametrize(
    "query",
    [
        {"before": str(HUGE)},
        {"before": "0"},
        {"before": "-5"},
        {"before": "1.5"},
        {"limit": str(HUGE)},
        {"limit": "0"},
        {"limit": "1_0"},
        {"before": " 1"},
    ],
)
async def test_a_cursor_or_limit_out_of_range_is_a_bad_query(
    client: httpx.AsyncClient, query: dict[str, str]
) -> None:
    r = await client.get(f"/v1/agents/{AGENT}/webhook/deliveries", params=query)
    assert_error(r, 400, "invalid_query")
    assert next(iter(query)) in r.json()["error"]["message"]


@pytest.mark.anyio
async def test_a_valid_cursor_pages_the_log(client: httpx.AsyncClient) -> None:
    rows = (await client.get(f"/v1/agents/{AGENT}/webhook/deliveries")).json()
    assert rows
    r = await client.get(
        f"/v1/agents/{AGENT}/webhook/deliveries",
        params={"before": str(2**63 - 1), "limit": "1000"},
    )
    # the same deliveries (their attempts may move on between the two reads)
    assert r.status_code == 200 and [d["id"] for d in r.json()] == [d["id"] for d in rows]
    r = await client.get(
        f"/v1/agents/{AGENT}/webhook/deliveries", params={"before": str(rows[-1]["id"])}
    )
    assert r.status_code == 200 and r.json() == []


def _cli_config(tmp_path: Path) -> str:
    config = tmp_path / "c.toml"
    config.write_text(f'[runtime]\ndatabase = "sqlite:///{tmp_path / "cli.db"}"\n')
    from webhook_plugin.storage import open_store

    store = open_store(f"sqlite:///{tmp_path / 'cli.db'}")
    store.open()
    store.close()
    return str(config)


@pytest.mark.parametrize("delivery_id", [str(HUGE), str(2**63), "0", "-3", "abc"])
def test_cli_redeliver_refuses_an_id_out_of_range(tmp_path: Path, delivery_id: str) -> None:
    config = _cli_config(tmp_path)
    r = subprocess.run(
        [*CLI, "redeliver", "--config", config, "--", delivery_id],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    assert "delivery" in r.stderr.lower() and "id" in r.stderr.lower(), r.stderr


def test_cli_redeliver_of_an_unknown_id_says_so(tmp_path: Path) -> None:
    r = subprocess.run(
        [*CLI, "redeliver", "--config", _cli_config(tmp_path), str(2**63 - 1)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    assert "does not exist" in r.stderr, r.stderr


@pytest.mark.parametrize("limit", [str(HUGE), "0", "-1"])
def test_cli_deliveries_refuses_a_limit_out_of_range(tmp_path: Path, limit: str) -> None:
    r = subprocess.run(
        [*CLI, "deliveries", "--config", _cli_config(tmp_path), "--limit", limit],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    assert "--limit" in r.stderr, r.stderr


# -- the property test ---------------------------------------------------------------------------------

ROUTES = [
    (route.path, method)
    for route in routes
    for method in sorted(route.methods or ())
    if method != "HEAD" and route.path.startswith("/v1")
]

huge_ints = st.sampled_from([2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**100, -1, 0, 1])
ints = st.one_of(st.integers(), huge_ints)
hostile_path_text = st.one_of(
    st.sampled_from(["0", "-1", str(2**63), str(2**64), "1" * 400, "٣", "１", " 1", "1_0", "%"]),
    ints.map(str),
    st.text(min_size=1, max_size=30),
    st.text(min_size=190, max_size=260),
)


def mostly(usual: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual`` three times in four (``one_of`` would flatten ``other``'s branches)."""
    return st.integers(0, 3).flatmap(lambda n: usual if n else other)


#: each path parameter: mostly one that exists, so that the handler gets further
PATH_PARAMS = {
    "agent_id": mostly(st.just(AGENT), hostile_path_text),
    "conversation_id": mostly(st.just(CONV), hostile_path_text),
    "delivery_id": mostly(st.sampled_from(["1", "2"]), hostile_path_text),
}
query_values = st.one_of(
    ints.map(str),
    st.sampled_from(["", "true", "false", "pending", "failed", "succeeded", "nan", "inf", "-inf"]),
    st.sampled_from(["1e308", "1e999", "0x10", "1_000", " 5", "5 ", "٣", "2592000.5"]),
    st.floats().map(str),
    st.text(max_size=20),
)
query_keys = st.one_of(
    st.sampled_from(["status", "before", "limit", "test", "graceSeconds"]), st.text(max_size=10)
)
timestamps = st.one_of(
    st.sampled_from(
        [
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999Z",
            "1969-12-31T23:59:59Z",
            "2026-11-25T08:00:00",
            "2026-11-25T08:00:00+23:59",
            "2026-13-40T99:99:99Z",
        ]
    ),
    st.datetimes(timezones=st.one_of(st.none(), st.timezones())).map(lambda d: d.isoformat()),
    ints,
    st.text(max_size=30),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=15,
)
field_values = st.one_of(
    json_values,
    timestamps,
    # long strings, around the 64 KiB text limit: one character repeated
    st.tuples(st.characters(), st.integers(1000, 70_000)).map(lambda t: t[0] * t[1]),
    # deep nesting
    st.integers(1, 400).map(lambda n: json.loads("[" * n + "]" * n)),
)

MESSAGE = {
    "conversationId": CONV,
    "channel": "web",
    "text": "hello",
    "messageId": "m1",
    "createdAt": "2026-11-25T08:00:00Z",
    "contact": {"id": "u1", "name": "Ana", "email": "a@example.com", "phoneNumber": "+55"},
    "group": {"id": "g1", "name": "G", "mentioned": True},
    "attachments": [{"url": "https://example.com/a.png", "mimeType": "image/png", "size": 3}],
}
SETTINGS = {
    "url": "http://127.0.0.1:9/h",
    "header": "Authorization: Bearer abc",
    "signingSecret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "events": ["AGENT_USER_MESSAGE"],
    "userInfoUrl": "http://127.0.0.1:9/u",
    "userInfoHeader": "X-Api-Key: k",
}


def _fields(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON value, e.g. ``("attachments", 0, "size")``."""
    paths = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            paths += _fields(item, (*prefix, key))
        paths.append((*prefix, "extra"))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            paths += _fields(item, (*prefix, index))
    return paths


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` (a valid body) with 0 to 3 of its fields, nested ones too, replaced or dropped."""
    body = json.loads(json.dumps(base))
    for path in draw(st.lists(st.sampled_from(_fields(base)), max_size=3, unique=True)):
        parent = body
        try:
            for key in path[:-1]:
                parent = parent[key]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation replaced the parent
        if not isinstance(parent, dict | list):
            continue
        key = path[-1]
        if isinstance(parent, dict) and draw(st.integers(0, 4)) == 0:
            parent.pop(key, None)
        elif isinstance(parent, dict) or (isinstance(key, int) and key < len(parent)):
            # (an earlier mutation may have put a list where an object was)
            parent[key] = draw(
                timestamps if key == "createdAt" and draw(st.booleans()) else field_values
            )
    return body


#: each route's valid body, mutated
SHAPED = {
    "/v1/agents/{agent_id}/messages": mutated(MESSAGE),
    "/v1/conversations/{conversation_id}": mutated({"aiEnabled": False}),
    "/v1/conversations/{conversation_id}/inbox-messages": mutated({"text": "hi"}),
    "/v1/agents/{agent_id}/webhook": mutated(SETTINGS),
}
any_body = st.one_of(
    st.none(),
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.integers(min_value=1, max_value=100_000).map(lambda n: ("[" * n + "]" * n).encode()),
    st.integers(min_value=1, max_value=100_000).map(
        lambda n: ('{"a":' * n + "1" + "}" * n).encode()
    ),
    st.sampled_from(
        [b"1e999", b"-1e999", b'{"text": NaN}', b'{"aiEnabled": 1e400}', b"\xff\xfe", b'"\\ud800"']
    ),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, str, bytes | None]:
    """(method, route template, URL, body) for one route of the app."""
    template, method = draw(st.sampled_from(ROUTES))
    path = template
    for name, strategy in PATH_PARAMS.items():
        if "{" + name + "}" in path:
            path = path.replace("{" + name + "}", quote(draw(strategy), safe=""))
    query = draw(st.lists(st.tuples(query_keys, query_values), max_size=3))
    shaped = SHAPED.get(template)
    body = draw(
        any_body
        if shaped is None
        else mostly(shaped.map(lambda v: json.dumps(v).encode()), any_body)
    )
    return method, template, path + ("?" + urlencode(query) if query else ""), body


# Every draw happens in the strategy: hypothesis must not raise inside the event loop.
@pytest.mark.fuzz
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
@settings(
    max_examples=int(os.environ.get("WEBHOOK_PLUGIN_FUZZ_EXAMPLES", "600")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests())
async def test_no_input_gets_a_5xx(
    client: httpx.AsyncClient, request: tuple[str, str, str, bytes | None]
) -> None:
    method, template, url, body = request
    r = await client.request(
        method, url, content=body, headers={"content-type": "application/json"}
    )
    event(f"{method} {template} -> {r.status_code}")
    assert_error(r)
