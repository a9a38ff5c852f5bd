"""``/openapi.json`` and ``/api``, the page that shows the same document."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ._openapi import openapi_document
from ._render import render

__all__ = ["api_page", "openapi_json"]


async def openapi_json(request: Request) -> Response:
    return JSONResponse(openapi_document())


def _schema_type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rpartition("/")[2]
    if "anyOf" in schema:
        return " or ".join(_schema_type(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(map(str, schema["enum"]))
    if "const" in schema:
        return repr(schema["const"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {_schema_type(schema.get('items', {}))}"
    if schema.get("format"):
        return f"{kind} ({schema['format']})"
    return str(kind)


def _fields(schema: dict[str, Any]) -> list[tuple[str, str, bool]]:
    required = set(schema.get("required", ()))
    return [
        (name, _schema_type(prop), name in required)
        for name, prop in schema.get("properties", {}).items()
    ]


async def api_page(request: Request) -> Response:
    doc = openapi_document()
    schemas = doc["components"]["schemas"]
    operations = []
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            body_name = _schema_type(body["schema"]) if body else None
            answer = op["responses"]["200"].get("content", {})
            answer_schema = next(iter(answer.values()), {"schema": None})["schema"]
            operations.append(
                {
                    "method": method.upper(),
                    "path": path,
                    "summary": op["summary"],
                    "description": op.get("description"),
                    "body": body_name,
                    "body_fields": _fields(schemas[body_name]) if body_name in schemas else [],
                    "answer": _schema_type(answer_schema) if answer_schema else None,
                    "errors": [s for s in op["responses"] if s != "200"],
                    "public": op.get("security") == [],
                }
            )
    webhooks = []
    for event, item in doc["webhooks"].items():
        name = _schema_type(item["post"]["requestBody"]["content"]["application/json"]["schema"])
        webhooks.append(
            {"event": event, "summary": item["post"]["summary"], "fields": _fields(schemas[name])}
        )
    return render(
        request, "api.html", section="api", doc=doc, operations=operations, webhooks=webhooks
    )
