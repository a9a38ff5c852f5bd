"""The wire format: golden files per event type, and properties over any input."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import AGENT, AGENT_MSG, CONVERSATION, TESTS, USER_MSG
from webhook_plugin import (
    Agent,
    Attachment,
    Contact,
    Conversation,
    Group,
    Message,
    WebhookEventType,
)
from webhook_plugin.events import OperationalEventType
from webhook_plugin.payloads import PAYLOAD_TYPES, build_payload, encode, json_schemas
from webhook_plugin.runtime.chat import channels
from webhook_plugin.storage._outbox_sql import with_sequence

GOLDEN = TESTS / "golden"
E = WebhookEventType
GROUP = Group(id="120363@g.us", name="Clientes VIP", mentioned=False)


def example(event_type: E) -> bytes:
    """One realistic payload of each event type (also shown in the README)."""
    conversation = CONVERSATION
    message = AGENT_MSG
    kwargs: dict = {}
    if event_type is E.USER_MESSAGE_RECEIVED:
        conversation = msgspec.structs.replace(CONVERSATION, ai_enabled=False)
        message = USER_MSG
    elif event_type is E.AGENT_USER_MESSAGE:
        kwargs["user_message"] = USER_MSG
    elif event_type is E.AGENT_MESSAGE_BLOCKED:
        # the reasons the reference runtime gives, so the README shows what it sends
        kwargs["reason"] = channels.decide("whatsapp", None, 0.0)[1]
    elif event_type is E.AGENT_MESSAGE_NOTED:
        conversation = msgspec.structs.replace(CONVERSATION, channel="api")
        kwargs["reason"] = channels.decide("api", None, 0.0)[1]
    elif event_type is E.GROUP_MESSAGE_RECEIVED:
        message = msgspec.structs.replace(
            USER_MSG,
            attachments=(
                Attachment(
                    url="https://cdn.example.com/a.jpg",
                    mime_type="image/jpeg",
                    name="a.jpg",
                    size=2048,
                ),
            ),
        )
        kwargs["group"] = GROUP
    # as the receiver gets it: the first event of its conversation
    return with_sequence(
        encode(
            build_payload(
                event_type, agent=AGENT, conversation=conversation, message=message, **kwargs
            )
        ),
        1,
    )


@pytest.mark.parametrize("event_type", list(E))
def test_golden(event_type: E) -> None:
    path = GOLDEN / f"{event_type.value}.json"
    encoded = json.loads(example(event_type))
    assert encoded == json.loads(path.read_text()), f"payload of {event_type} changed"


@pytest.mark.parametrize("event_type", list(E))
def test_required_fields_per_event(event_type: E) -> None:
    body = json.loads(example(event_type))
    assert body["eventType"] == event_type.value
    for name in ("agentId", "conversationId", "channel", "createdAt", "isAiEnabled", "messageId"):
        assert name in body
    assert ("groupId" in body) == ("groupName" in body) == (event_type is E.GROUP_MESSAGE_RECEIVED)
    assert ("userMessageId" in body) == (event_type is E.AGENT_USER_MESSAGE)
    assert ("reason" in body) == (event_type in (E.AGENT_MESSAGE_BLOCKED, E.AGENT_MESSAGE_NOTED))
    has_user = event_type in (
        E.USER_MESSAGE_RECEIVED,
        E.AGENT_USER_MESSAGE,
        E.GROUP_MESSAGE_RECEIVED,
    )
    assert ("userMessage" in body) == has_user
    assert ("agentResponse" in body) == (
        event_type not in (E.USER_MESSAGE_RECEIVED, E.GROUP_MESSAGE_RECEIVED)
    )


def test_message_id_is_the_agents_or_the_users_as_the_contract_says() -> None:
    assert json.loads(example(E.AGENT_USER_MESSAGE))["messageId"] == AGENT_MSG.id
    assert json.loads(example(E.AGENT_USER_MESSAGE))["userMessageId"] == USER_MSG.id
    assert json.loads(example(E.USER_MESSAGE_RECEIVED))["messageId"] == USER_MSG.id


def test_created_at_is_rfc3339_utc_whatever_the_input_zone() -> None:
    local = Message(
        id="m",
        text="x",
        created_at=datetime(2026, 1, 1, 9, 0, tzinfo=timezone(timedelta(hours=-3))),
    )
    body = json.loads(
        encode(
            build_payload(
                E.AGENT_MESSAGE_SENDED, agent=AGENT, conversation=CONVERSATION, message=local
            )
        )
    )
    assert body["createdAt"] == "2026-01-01T12:00:00Z"


def test_missing_parts_are_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="needs the group"):
        build_payload(
            E.GROUP_MESSAGE_RECEIVED, agent=AGENT, conversation=CONVERSATION, message=USER_MSG
        )
    with pytest.raises(ValueError, match="needs a reason"):
        build_payload(
            E.AGENT_MESSAGE_BLOCKED, agent=AGENT, conversation=CONVERSATION, message=AGENT_MSG
        )


def test_json_schema_for_every_event_type() -> None:
    schemas = json_schemas()
    operational = {e.value for e in OperationalEventType}
    assert set(schemas) == {e.value for e in E} | {"WEBHOOK_TEST"} | operational
    group = schemas["GROUP_MESSAGE_RECEIVED"]
    definition = group["$defs"]["GroupMessageReceived"]
    assert {"groupId", "groupName", "eventType"} <= set(definition["required"])
    assert "groupId" not in schemas["AGENT_USER_MESSAGE"]["$defs"]["AgentUserMessage"]["properties"]


# -- properties ---------------------------------------------------------------------------

text = st.text(max_size=40)
maybe = st.none() | text
moments = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(9999, 1, 1),
    timezones=st.just(UTC) | st.just(timezone(timedelta(hours=5))),
)


@st.composite
def events(draw: st.DrawFn) -> tuple[E, bytes]:
    event_type = draw(st.sampled_from(list(E)))
    agent = Agent(id=draw(text), name=draw(maybe), organization_id=draw(maybe))
    contact = Contact(id=draw(maybe), name=draw(maybe), email=draw(maybe), phone_number=draw(maybe))
    conversation = Conversation(
        id=draw(text),
        agent_id=agent.id,
        channel=draw(text),
        ai_enabled=draw(st.booleans()),
        contact=contact,
    )
    attachments = tuple(
        draw(
            st.lists(
                st.builds(
                    Attachment,
                    url=text,
                    mime_type=maybe,
                    name=maybe,
                    size=st.none() | st.integers(0, 2**40),
                ),
                max_size=2,
            )
        )
    )
    message = Message(
        id=draw(text), text=draw(text), created_at=draw(moments), attachments=attachments
    )
    payload = build_payload(
        event_type,
        agent=agent,
        conversation=conversation,
        message=message,
        user_message=Message(id=draw(text), text=draw(text), created_at=draw(moments)),
        group=Group(id=draw(text), name=draw(text)),
        reason=draw(text),
    )
    return event_type, encode(payload)


def _nulls(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, dict):
        return any(_nulls(v) for v in value.values())
    if isinstance(value, list):
        return any(_nulls(v) for v in value)
    return False


@given(events())
def test_no_encoded_payload_contains_null(drawn: tuple[E, bytes]) -> None:
    _, body = drawn
    assert not _nulls(json.loads(body))


@given(events())
def test_group_fields_exactly_on_group_events(drawn: tuple[E, bytes]) -> None:
    event_type, body = drawn
    decoded = json.loads(body)
    is_group = event_type is E.GROUP_MESSAGE_RECEIVED
    assert ("groupId" in decoded) is is_group
    assert ("groupName" in decoded) is is_group
    assert decoded["eventType"] == event_type.value


@given(events())
def test_payloads_round_trip_through_their_struct(drawn: tuple[E, bytes]) -> None:
    event_type, body = drawn
    decoded = msgspec.json.decode(body, type=PAYLOAD_TYPES[event_type])
    assert encode(decoded) == body


def test_one_list_of_contact_fields_for_the_api_the_wire_and_the_hooks() -> None:
    import msgspec

    from webhook_plugin.models import Contact
    from webhook_plugin.payloads import contact_from_wire, contact_to_wire
    from webhook_plugin.runtime.api.io import ContactIn

    names = [f.name for f in msgspec.structs.fields(Contact)]
    assert [f.name for f in msgspec.structs.fields(ContactIn)] == names
    full = Contact(id="u1", name="Ana", email="a@b.c", phone_number="+55")
    wire = contact_to_wire(full)
    assert wire == {"id": "u1", "name": "Ana", "email": "a@b.c", "phoneNumber": "+55"}
    assert contact_from_wire(wire) == full
    assert contact_to_wire(Contact(email="a@b.c", name="")) == {"email": "a@b.c"}
    assert msgspec.to_builtins(ContactIn(**{n: getattr(full, n) for n in names})) == wire


def test_the_readme_shows_each_golden_payload_as_it_is() -> None:
    """The README's example payloads are the golden files, word for word."""
    readme = (TESTS.parent / "README.md").read_text()
    shown = {}
    for block in readme.split("```json\n")[1:]:
        body = block.split("```", 1)[0]
        try:
            data = json.loads(body)
        except ValueError:
            continue
        if isinstance(data, dict) and "messageId" in data:
            shown[data["eventType"]] = data
    for event_type in E:
        golden = json.loads((GOLDEN / f"{event_type.value}.json").read_text())
        assert shown.get(event_type.value) == golden, f"README's {event_type} differs"
