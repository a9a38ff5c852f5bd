"""An agent's delivery log (with the endpoint health strip), one delivery with
its attempts, and redelivery.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlencode

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from ...events import OperationalEventType, WebhookEventType
from ...exceptions import Expired, NotFound
from ...settings import WebhookSettings
from ...storage.base import DELIVERY_STATUSES, AttemptRecord, DeliveryRecord
from ..api.io import attempt_json, parse_id, request_headers
from ..chat.middleware import pipeline_from
from ._health import BUCKET_SECONDS, HOURS, health_strip
from ._render import db, field, local_target, path_agent_id, redirect, render, seg
from ._session import read_form, session_of

__all__ = ["deliveries", "delivery", "recover", "redeliver", "redeliver_failed"]

PAGE_SIZE: Final = 50
#: the operational events shown on the log page
TIMELINE: Final = 20
#: the log's filters (query names, snake_case as the form's fields)
FILTERS: Final = ("status", "event_type", "conversation_id", "webhook_id", "since", "until")
EVENT_TYPES: Final = tuple(str(e) for e in (*WebhookEventType, *OperationalEventType))


def _filters(query: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str], str | None]:
    """The log's filters from a query (or a form): the keyword arguments of
    ``list_deliveries``, the values to show back, and what was wrong with them."""
    shown = {name: (query.get(name) or "").strip() for name in FILTERS}
    status = shown["status"] if shown["status"] in DELIVERY_STATUSES else None
    event_type = shown["event_type"] if shown["event_type"] in EVENT_TYPES else None
    error = None
    times: dict[str, float | None] = {}
    for name in ("since", "until"):
        times[name] = None
        if shown[name]:
            try:  # a datetime-local field: its time is UTC here (the page says so)
                moment = datetime.fromisoformat(shown[name])
                times[name] = moment.replace(tzinfo=moment.tzinfo or UTC).timestamp()
            except ValueError:
                error = f"{'From' if name == 'since' else 'To'}: not a date and time"
    where = {
        "status": status,
        "event_type": event_type,
        "conversation_id": shown["conversation_id"] or None,
        "webhook_id": shown["webhook_id"] or None,
        "since": times["since"],
        "until": times["until"],
    }
    return where, shown, error


async def deliveries(request: Request) -> Response:
    agent_id = path_agent_id(request)
    pipeline = pipeline_from(request)
    agent = await pipeline.agent(agent_id)  # 404 for an unknown agent
    where, shown, error = _filters(request.query_params)
    before = parse_id(request.query_params.get("before", ""))
    rows = await pipeline.engine.list_deliveries(
        agent_id=agent_id, limit=PAGE_SIZE + 1, before_id=before, **where
    )
    older = None
    if len(rows) > PAGE_SIZE:
        rows = rows[:PAGE_SIZE]
        query = {"before": rows[-1].id, **{k: v for k, v in shown.items() if v}}
        older = f"?{urlencode(query)}"
    since = time.time() - HOURS * BUCKET_SECONDS
    stats = await db(
        pipeline.engine.store.attempt_stats, agent_id, since=since, bucket_seconds=BUCKET_SECONDS,
        buckets=HOURS,
    )  # fmt: skip
    settings = await pipeline.engine.get_settings(agent_id) or WebhookSettings()
    timeline: list[DeliveryRecord] = []
    for kind in OperationalEventType:  # what the operations URL was told
        timeline += await pipeline.engine.list_deliveries(
            agent_id=agent_id, event_type=str(kind), limit=TIMELINE
        )
    timeline.sort(key=lambda d: d.id, reverse=True)
    return render(
        request,
        "deliveries.html",
        section="agents",
        agent_id=agent_id,
        agent_label=agent.name or agent_id,
        rows=rows,
        filter_status=where["status"],
        filters=shown,
        filtered=any(shown.values()),
        filter_error=error,
        statuses=DELIVERY_STATUSES,
        event_types=EVENT_TYPES,
        older=older,
        paged=before is not None,
        health=health_strip(stats, since=since),
        settings=settings,
        timeline=[(d, _reason(d)) for d in timeline[:TIMELINE]],
    )


def _reason(d: DeliveryRecord) -> str:
    """The ``reason`` an operational event's payload gives."""
    try:
        reason = msgspec.json.decode(d.body).get("reason", "")
    except (msgspec.DecodeError, AttributeError):
        return ""
    return reason if isinstance(reason, str) else ""


async def _confirm(
    request: Request, agent_id: str, *, count: int, what: str, action: str, fields: dict[str, str]
) -> Response:
    """The page that asks before queueing ``count`` deliveries again."""
    pipeline = pipeline_from(request)
    agent = await pipeline.agent(agent_id)
    return render(
        request,
        "confirm.html",
        section="agents",
        agent_id=agent_id,
        agent_label=agent.name or agent_id,
        count=count,
        what=what,
        action=action,
        fields=fields,
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
    if not record.body:
        payload = "Expired: the payload was purged after the log's retention."
    settings = await pipeline.engine.get_settings(agent_id) or WebhookSettings()

    def response_headers(a: AttemptRecord) -> list[tuple[str, str]]:
        shown = attempt_json(record, a, settings)["responseHeaders"] or {}
        return [(str(k), str(v)) for k, v in shown.items()]

    return render(
        request,
        "delivery.html",
        section="agents",
        agent_id=agent_id,
        agent_label=agent.name or agent_id,
        d=record,
        attempts=attempts,
        payload=payload,
        request_headers=lambda a: request_headers(record, a, settings),
        response_headers=response_headers,
    )


async def redeliver(request: Request) -> Response:
    agent_id = path_agent_id(request)
    fields = await read_form(request)
    back = local_target(field(fields, "next"), f"/agents/{seg(agent_id)}/deliveries")
    try:
        record = await pipeline_from(request).engine.redeliver(_delivery_id(request), agent_id)
    except Expired as exc:
        session_of(request).flash("error", str(exc))
        return redirect(back)
    session_of(request).flash(
        "ok",
        f"Delivery {record.id} ({record.event_type}) is queued again, with the same webhook-id.",
    )
    return redirect(back)


async def redeliver_failed(request: Request) -> Response:
    """Every failed delivery of the agent queued again, once confirmed."""
    agent_id = path_agent_id(request)
    fields = await read_form(request)
    engine = pipeline_from(request).engine
    await pipeline_from(request).agent(agent_id)
    log = f"/agents/{seg(agent_id)}/deliveries"
    if field(fields, "confirm") != "yes":
        failed = (await engine.count_deliveries(agent_id))["failed"]
        if failed:
            return await _confirm(
                request, agent_id, count=failed, what="failed", action=f"{log}/redeliver-failed",
                fields={},
            )  # fmt: skip
    count = await engine.redeliver_failed(agent_id=agent_id)
    session_of(request).flash(
        "ok",
        f"{count} failed deliver{'y is' if count == 1 else 'ies are'} queued again."
        if count
        else "No failed deliveries to queue again.",
    )
    return redirect(log)


async def recover(request: Request) -> Response:
    """The failed and held deliveries of a time range (and an event type) queued
    again, oldest first, once the owner has seen how many."""
    agent_id = path_agent_id(request)
    form = await read_form(request)
    fields = {name: field(form, name) for name in ("since", "until", "event_type")}
    where, shown, error = _filters(fields)
    log = f"/agents/{seg(agent_id)}/deliveries"
    if error or where["since"] is None:
        session_of(request).flash("error", error or "Recover: say from when (UTC).")
        return redirect(log)
    engine = pipeline_from(request).engine
    event_types = [where["event_type"]] if where["event_type"] else None
    args = {"since": where["since"], "until": where["until"], "event_types": event_types}
    if field(form, "confirm") != "yes":
        count = await engine.recover(agent_id, dry_run=True, **args)
        if count:
            kept = {k: v for k, v in shown.items() if k in fields and v}
            return await _confirm(
                request, agent_id, count=count, what="failed or held",
                action=f"{log}/recover", fields=kept,
            )  # fmt: skip
    count = await engine.recover(agent_id, **args)
    session_of(request).flash(
        "ok",
        f"{count} deliver{'y is' if count == 1 else 'ies are'} queued again, oldest first."
        if count
        else "No failed or held deliveries in that range.",
    )
    return redirect(log)
