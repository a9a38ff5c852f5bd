"""The public face: what users import, and the documentation of every hook."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import webhook_plugin
from helpers import ROOT
from webhook_plugin import hookspecs

HOOKS = [
    name
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
    if hasattr(fn, "webhook_plugin_spec")
]


def test_all_is_sorted_and_importable() -> None:
    assert webhook_plugin.__all__ == sorted(webhook_plugin.__all__)
    for name in webhook_plugin.__all__:
        assert hasattr(webhook_plugin, name), name


def test_contract_import_works_in_a_fresh_interpreter() -> None:
    code = "from webhook_plugin import hookimpl, WebhookEventType; print(WebhookEventType.AGENT_MESSAGE_SENDED)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "AGENT_MESSAGE_SENDED"


def test_ships_py_typed() -> None:
    assert (Path(webhook_plugin.__file__).parent / "py.typed").exists()


def test_the_contract_hooks_exist() -> None:
    assert set(HOOKS) == {
        "on_user_message",
        "on_agent_reply",
        "on_blocked",
        "on_noted",
        "on_group_message",
        "fetch_user_info",
        "on_endpoint_failing",
        "on_endpoint_disabled",
        "on_endpoint_recovered",
        "on_delivery_exhausted",
    }
    assert hookspecs.fetch_user_info.webhook_plugin_spec["firstresult"] is True
    for name in HOOKS:
        if name != "fetch_user_info":
            assert not getattr(hookspecs, name).webhook_plugin_spec["firstresult"], name


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_typed_and_says_when_it_fires(hook: str) -> None:
    fn = getattr(hookspecs, hook)
    doc = inspect.getdoc(fn) or ""
    assert len(doc) > 80, f"{hook} needs a docstring saying when it fires"
    for name, parameter in inspect.signature(fn).parameters.items():
        assert parameter.annotation is not inspect.Parameter.empty, f"{hook}({name}) is untyped"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_documentation_section(hook: str) -> None:
    docs = (ROOT / "docs" / "hooks.md").read_text()
    assert f"### `{hook}(" in docs, f"docs/hooks.md has no section for {hook}"


def test_the_import_contracts_hold() -> None:
    """docs/architecture.md's dependency rules, as import-linter contracts
    (pyproject.toml): nothing but the CLI imports the runtime, and so on."""
    from importlinter import cli

    assert cli.lint_imports(config_filename=str(ROOT / "pyproject.toml")) == 0


def test_pure_modules_import_only_each_other() -> None:
    """hookspecs, events, payloads, settings (and the plain models and exceptions
    they use) do no I/O and import nothing else of the package."""
    import ast

    pure = {"hookspecs", "events", "payloads", "settings", "models", "exceptions"}
    io_modules = {"sqlite3", "socket", "anyio", "httpx", "h11", "psycopg", "asyncio", "trio"}
    package = ROOT / "src" / "webhook_plugin"
    for name in sorted(pure):
        tree = ast.parse((package / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and node.module in pure, f"{name}.py imports .{node.module}"
            elif isinstance(node, ast.ImportFrom | ast.Import):
                modules = (
                    [node.module]
                    if isinstance(node, ast.ImportFrom)
                    else [a.name for a in node.names]
                )
                for module in modules:
                    assert module.split(".")[0] not in io_modules, f"{name}.py imports {module}"
