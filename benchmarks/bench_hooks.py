"""Hook-path cost: what `pm.hook.on_agent_reply(...)` costs the chat pipeline.

    python benchmarks/bench_hooks.py [--json]

Compared, in one run:

- floor: a pluggy call to one empty hookimpl, plus building and encoding the
  payload (the least any plugin that sends this payload could do);
- webhook-plugin, stand-in outbox: the real WebhookPlugin registered, settings
  looked up, event type mapped, payload built and encoded, handed to an
  in-memory outbox that only keeps it;
- webhook-plugin, real outbox (in memory part): the same with the engine's own
  enqueue (webhook id, outbox record, awaitable ticket); the batched write to
  SQLite happens later, off the hook path, and is measured by bench_outbox.
"""

from __future__ import annotations

from typing import Any

from _harness import emit, environment, parser, per_op_ns
from bench_encoding import AGENT, AGENT_MSG, CONVERSATION, USER_MSG
from webhook_plugin import PluginManager, WebhookPlugin, WebhookSettings, hookimpl
from webhook_plugin.delivery.engine import DeliveryEngine
from webhook_plugin.events import WebhookEventType
from webhook_plugin.payloads import build_payload, encode
from webhook_plugin.storage.sqlite import SQLiteStore

SETTINGS = WebhookSettings.validated(url="https://hooks.example.com/chat")


class MemoryOutbox:
    def __init__(self) -> None:
        self.items: list[tuple[str, WebhookEventType, bytes]] = []

    def settings_for(self, agent_id: str) -> WebhookSettings | None:
        return SETTINGS

    def enqueue(
        self,
        agent_id: str,
        event_type: WebhookEventType,
        body: bytes,
        conversation_id: object = None,
    ) -> Any:
        self.items.append((agent_id, event_type, body))
        if len(self.items) > 10_000:
            self.items.clear()
        return None


class FloorPlugin:
    @hookimpl
    def on_agent_reply(self, agent, conversation, message, in_reply_to):  # type: ignore[no-untyped-def]
        return encode(
            build_payload(
                WebhookEventType.AGENT_USER_MESSAGE,
                agent=agent,
                conversation=conversation,
                message=message,
                user_message=in_reply_to,
            )
        )


def caller(plugin: object) -> Any:
    pm = PluginManager()
    pm.register(plugin)
    hook = pm.hook.on_agent_reply

    def call() -> Any:
        return hook(agent=AGENT, conversation=CONVERSATION, message=AGENT_MSG, in_reply_to=USER_MSG)

    return call


def main() -> None:
    args = parser(__doc__).parse_args()
    rounds = 3 if args.quick else args.rounds
    min_time = 0.05 if args.quick else 0.3

    engine = DeliveryEngine(SQLiteStore(":memory-unused:"))
    engine.endpoints._cache["agent_7f3a9c"] = SETTINGS  # no I/O: the engine is not started

    def real_enqueue_call() -> Any:
        result = real()
        if len(engine.outbox) > 10_000:
            engine.outbox._current.items.clear()  # keep memory flat; nothing is written
        return result

    real = caller(WebhookPlugin(engine))
    contenders = [
        ("floor: pluggy call + build + encode", caller(FloorPlugin())),
        ("webhook-plugin, stand-in outbox", caller(WebhookPlugin(MemoryOutbox()))),
        ("webhook-plugin, real outbox enqueue", real_enqueue_call),
    ]
    results = {name: per_op_ns(fn, rounds=rounds, min_time=min_time) for name, fn in contenders}
    floor_ns = results["floor: pluggy call + build + encode"]
    rows = [
        [name, f"{ns / 1000:.2f}", f"{1e9 / ns:,.0f}", f"{ns / floor_ns:.2f}x"]
        for name, ns in results.items()
    ]
    emit(
        args,
        f"bench_hooks: pm.hook.on_agent_reply, one AGENT_USER_MESSAGE ({environment()}), median of {rounds} rounds",
        ["path", "us/event", "events/s (one core)", "vs floor"],
        rows,
        {
            "stand-in path vs floor (target <= 2x)": f"{results['webhook-plugin, stand-in outbox'] / floor_ns:.2f}x"
        },
    )


if __name__ == "__main__":
    main()
