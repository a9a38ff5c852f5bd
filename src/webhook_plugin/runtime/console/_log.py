"""An agent's delivery log (with the endpoint health strip), one delivery with
its attempts, and redelivery.
"""

from __future__ import annotations

import time
from typing import Final, cast
from urllib.parse import urlencode

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from ...exceptions import NotFound
from ...settings import WebhookSettings
from ...storage.base import DeliveryStatus
from ..api_io import parse_id
from ..middleware import pipeline_from
from ._health import BUCKET_SECONDS, HOURS, health_strip
from ._render import db, field, local_target, path_agent_id, redirect, render, seg
from ._session import read_form, session_of

__all__ = ["deliveries", "delivery", "redeliver", "redeliver_failed"]

PAGE_SIZE: Final = 50


async def deliveries(request: Request) -> Response:
    agent_id = path_agent_id(request)
    pipeline = pipeline_from(request)
    agent = await pipeline.agent(agent_id)  # 404 for an unknown agent
    given = request.query_params.get("status") or None
    status = cast("DeliveryStatus", given) if given in ("pending", "succeeded", "failed") else None
    before = parse_id(request.query_params.get("before", ""))
    rows = await pipeline.engine.list_deliveries(
        agent_id=agent_id, status=status, limit=PAGE_SIZE + 1, before_id=before
    )
    older = None
    if len(rows) > PAGE_SIZE:
        rows = rows[:PAGE_SIZE]
        query = {"before": rows[-1].id, **({"status": status} if status else {})}
        older = f"?{urlencode(query)}"
    since = time.time() - HOURS * BUCKET_SECONDS
    stats = await db(
        pipeline.engine.store.attempt_stats, agent_id, since=since, bucket_seconds=BUCKET_SECONDS,
        buckets=HOURS,
    )  # fmt: skip
    settings = await pipeline.engine.get_settings(agent_id) or WebhookSettings()
    return render(
        request,
        "deliveries.html",
        section="agents",
        agent_id=agent_id,
        agent_label=agent.name or agent_id,
        rows=rows,
        filter_status=status,
        older=older,
        paged=before is not None,
        health=health_strip(stats, since=since),
        settings=settings,
    )


def _delivery_id(request: Request) -> int:
    delivery_id = parse_id(request.path_params["delivery_id"])
    if delivery_id is None:
        raise NotFound("no such delivery")
    return delivery_id


async def delivery(request: Request) -> Response:
    agent_id = path_agent_id(request)
    pipeline = pipeline_from(request)
    agent = await pipeline.agent(agent_id)
    record = await pipeline.engine.get_delivery(_delivery_id(request), agent_id)
    attempts = await pipeline.engine.list_attempts(record.id)
    try:
        payload = msgspec.json.format(record.body, indent=2).decode()
    except (msgspec.DecodeError, UnicodeDecodeError):
        payload = record.body.decode(errors="replace")
    return render(
        request,
        "delivery.html",
        section="agents",
        agent_id=agent_id,
        agent_label=agent.name or agent_id,
        d=record,
        attempts=attempts,
        payload=payload,
    )


async def redeliver(request: Request) -> Response:
    agent_id = path_agent_id(request)
    fields = await read_form(request)
    record = await pipeline_from(request).engine.redeliver(_delivery_id(request), agent_id)
    session_of(request).flash(
        "ok",
        f"Delivery {record.id} ({record.event_type}) is queued again, with the same webhook-id.",
    )
    return redirect(local_target(field(fields, "next"), f"/agents/{seg(agent_id)}/deliveries"))


async def redeliver_failed(request: Request) -> Response:
    agent_id = path_agent_id(request)
    await read_form(request)
    await pipeline_from(request).agent(agent_id)
    count = await pipeline_from(request).engine.redeliver_failed(agent_id=agent_id)
    session_of(request).flash(
        "ok",
        f"{count} failed deliver{'y is' if count == 1 else 'ies are'} queued again."
        if count
        else "No failed deliveries to queue again.",
    )
    return redirect(f"/agents/{seg(agent_id)}/deliveries")
