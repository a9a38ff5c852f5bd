from __future__ import annotations

from pathlib import Path

import pytest

from helpers import AGENT, AGENT_MSG, CONVERSATION, USER_MSG
from webhook_plugin import NAME, PluginLoadError, PluginManager, UserInfo
from webhook_plugin.models import Group


@pytest.fixture(autouse=True)
def _clear_trail() -> None:
    from plugins import audit_log

    audit_log.TRAIL.clear()


def test_one_name_for_project_marker_and_entry_point_group() -> None:
    import pluggy

    from webhook_plugin import hookimpl

    assert NAME == "webhook_plugin"
    assert hookimpl.project_name == NAME
    assert PluginManager().pluggy.project_name == NAME
    assert not hasattr(__import__("webhook_plugin"), "hookspec")  # the spec marker is private
    assert isinstance(hookimpl, pluggy.HookimplMarker)


def test_third_party_plugin_loaded_by_dotted_path_receives_every_stage() -> None:
    pm = PluginManager()
    pm.load(["plugins.audit_log"])
    from plugins import audit_log

    pm.hook.on_user_message(agent=AGENT, conversation=CONVERSATION, message=USER_MSG)
    pm.hook.on_agent_reply(
        agent=AGENT, conversation=CONVERSATION, message=AGENT_MSG, in_reply_to=USER_MSG
    )
    pm.hook.on_group_message(
        agent=AGENT, conversation=CONVERSATION, message=USER_MSG, group=Group(id="g1", name="G")
    )
    assert audit_log.TRAIL == [
        ("user_message", "m_user"),
        ("agent_reply", "m_agent"),
        ("group_message", "g1"),
    ]
    assert "plugins.audit_log" in pm.names()


@pytest.mark.anyio
async def test_fetch_user_info_first_result_wins() -> None:
    pm = PluginManager()
    pm.load(["plugins.audit_log"])
    result = pm.hook.fetch_user_info(agent=AGENT, conversation=CONVERSATION)
    assert await result == UserInfo(status="ok", data={"plan": "gold", "source": "audit_log"})


def test_hooks_take_keyword_arguments_only() -> None:
    pm = PluginManager()
    with pytest.raises(TypeError):
        pm.hook.on_user_message(AGENT, CONVERSATION, USER_MSG)


def test_unknown_plugin_is_named_in_the_error() -> None:
    with pytest.raises(PluginLoadError, match="'no_such.plugin' cannot be imported"):
        PluginManager().load(["no_such.plugin"])


def test_plugin_that_fails_on_import_is_named() -> None:
    with pytest.raises(PluginLoadError, match="'plugins.fails_on_import'.*missing"):
        PluginManager().load(["plugins.fails_on_import"])


def test_plugin_with_a_wrong_hook_signature_is_named_and_not_registered() -> None:
    pm = PluginManager()
    with pytest.raises(PluginLoadError, match="(?s)'plugins.broken_signature'.*sentiment"):
        pm.load(["plugins.broken_signature"])
    assert "plugins.broken_signature" not in pm.names()


def test_entry_point_plugins_are_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dist = tmp_path / "audit_log_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: audit-log-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{NAME}]\naudit = plugins.audit_log\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = PluginManager()
    assert pm.load_entry_points() == 1
    assert "audit" in pm.names()


def test_broken_entry_point_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dist = tmp_path / "bad_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{NAME}]\nbad = plugins.fails_on_import\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginLoadError, match="entry point 'bad'"):
        PluginManager().load_entry_points()


def test_every_hook_has_a_typed_method_with_the_specs_arguments() -> None:
    import inspect

    from webhook_plugin import hookspecs

    specs = {
        name: fn
        for name, fn in vars(hookspecs).items()
        if callable(fn) and hasattr(fn, f"{hookspecs.NAME}_spec")
    }
    assert len(specs) == 10  # the six of the pipeline, four operational
    for name, spec in specs.items():
        method = getattr(PluginManager, name, None)
        assert method is not None, f"PluginManager has no typed method for {name}"
        wanted = list(inspect.signature(spec).parameters)
        given = [p for p in inspect.signature(method).parameters if p != "self"]
        assert given == wanted, name


def test_the_typed_methods_call_every_plugin() -> None:
    from helpers import AGENT, CONVERSATION, USER_MSG
    from webhook_plugin import hookimpl

    seen: list[str] = []

    class Recorder:
        @hookimpl
        def on_noted(self, agent, conversation, message, reason):  # type: ignore[no-untyped-def]
            seen.append(reason)
            return None

    pm = PluginManager()
    pm.register(Recorder())
    assert (
        pm.on_noted(agent=AGENT, conversation=CONVERSATION, message=USER_MSG, reason="api channel")
        == []
    )
    assert seen == ["api channel"]
