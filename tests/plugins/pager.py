"""A third-party plugin that pages someone on operational events: it appends
each to the file named by ``$PAGER_FILE`` (one JSON object a line)."""

from __future__ import annotations

import json
import os

from webhook_plugin import hookimpl
from webhook_plugin.payloads import OperationalEvent


def _page(event: OperationalEvent) -> None:
    with open(os.environ["PAGER_FILE"], "a") as f:
        f.write(json.dumps({"eventType": str(event.event_type), "agentId": event.agent_id}) + "\n")


@hookimpl
def on_endpoint_failing(event: OperationalEvent) -> None:
    _page(event)


@hookimpl
def on_endpoint_disabled(event: OperationalEvent) -> None:
    _page(event)


@hookimpl
def on_endpoint_recovered(event: OperationalEvent) -> None:
    _page(event)


@hookimpl
def on_delivery_exhausted(event: OperationalEvent) -> None:
    _page(event)
