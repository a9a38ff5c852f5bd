import pytest

from webhook_plugin import WebhookEventType
from webhook_plugin.events import Stage, event_for_stage

E = WebhookEventType


def test_values_equal_names_and_keep_the_wire_spelling() -> None:
    assert [e.value for e in E] == [e.name for e in E]
    assert {e.value for e in E} == {
        "USER_MESSAGE_RECEIVED",
        "AGENT_MESSAGE_SENDED",
        "AGENT_USER_MESSAGE",
        "AGENT_MESSAGE_BLOCKED",
        "AGENT_MESSAGE_NOTED",
        "GROUP_MESSAGE_RECEIVED",
    }
    assert E("AGENT_MESSAGE_SENDED") is E.AGENT_MESSAGE_SENDED


# The contract's table (CONTRACT.md section 1), row by row.
@pytest.mark.parametrize(
    ("stage", "kwargs", "expected"),
    [
        (Stage.USER_MESSAGE, {"ai_enabled": False}, E.USER_MESSAGE_RECEIVED),
        (Stage.USER_MESSAGE, {"ai_enabled": True}, None),
        (Stage.AGENT_REPLY, {"from_operator": False}, E.AGENT_USER_MESSAGE),
        (Stage.AGENT_REPLY, {"from_operator": True}, E.AGENT_MESSAGE_SENDED),
        (Stage.BLOCKED, {}, E.AGENT_MESSAGE_BLOCKED),
        (Stage.NOTED, {}, E.AGENT_MESSAGE_NOTED),
        (Stage.GROUP_MESSAGE, {}, E.GROUP_MESSAGE_RECEIVED),
    ],
)
def test_stage_to_event(stage: Stage, kwargs: dict, expected: E | None) -> None:
    assert event_for_stage(stage, **kwargs) == expected


def test_stage_names_are_the_hook_names() -> None:
    from webhook_plugin import hookspecs

    for stage in Stage:
        assert callable(getattr(hookspecs, stage.value))
