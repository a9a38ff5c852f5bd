"""Payload encoding: our build-and-encode path against stdlib json, orjson, pydantic v2
and the floor (msgspec encoding a prebuilt Struct).

    python benchmarks/bench_encoding.py [--json]
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from _harness import emit, environment, parser, per_op_ns
from webhook_plugin import Agent, Contact, Conversation, Message, WebhookEventType
from webhook_plugin.payloads import build_payload, encode

E = WebhookEventType.AGENT_USER_MESSAGE
AGENT = Agent(id="agent_7f3a9c", name="Atendimento Loja São Paulo", organization_id="org_51b2")
CONVERSATION = Conversation(
    id="conv_01J9ZK3Q8W",
    agent_id=AGENT.id,
    channel="whatsapp",
    ai_enabled=True,
    contact=Contact(
        id="contact_8812",
        name="João Conceição",
        email="joao.conceicao@example.com.br",
        phone_number="+5511987654321",
    ),
)
USER_TEXT = (
    "Olá! Comprei um tênis na semana passada e ainda não recebi. O código de rastreio não atualiza há três dias. "
    "Vocês podem verificar o que aconteceu com o meu pedido nº 48213? Obrigado pela atenção, é urgente 🙏 "
)[:300]
ANSWER = (
    (
        "Olá, João! Sinto muito pelo atraso. Verifiquei o pedido nº 48213: ele saiu do nosso centro de distribuição "
        "em Cajamar na terça-feira e está com a transportadora. Houve um atraso na triagem regional, mas a previsão "
        "de entrega foi atualizada para sexta-feira. Vou acompanhar de perto e, se não chegar até lá, reenviamos ou "
        "fazemos o estorno — você escolhe. Posso ajudar em mais alguma coisa? ✨ "
    )
    * 2
)[:600]
NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
USER_MSG = Message(id="wamid.HBgLNTUxMTk4NzY1NDMyMRUCABIYFjNFQjA", text=USER_TEXT, created_at=NOW)
AGENT_MSG = Message(id="msg_01J9ZK4B2N7Q", text=ANSWER, created_at=NOW)


def ours() -> bytes:
    return encode(
        build_payload(
            E, agent=AGENT, conversation=CONVERSATION, message=AGENT_MSG, user_message=USER_MSG
        )
    )


PREBUILT = build_payload(
    E, agent=AGENT, conversation=CONVERSATION, message=AGENT_MSG, user_message=USER_MSG
)
_encoder = msgspec.json.Encoder()


def floor() -> bytes:
    return _encoder.encode(PREBUILT)


def as_dict() -> dict[str, Any]:
    c = CONVERSATION.contact
    d = {
        "eventType": E.value,
        "messageId": AGENT_MSG.id,
        "userMessageId": USER_MSG.id,
        "userMessage": USER_MSG.text,
        "agentResponse": AGENT_MSG.text,
        "agentId": AGENT.id,
        "conversationId": CONVERSATION.id,
        "channel": CONVERSATION.channel,
        "createdAt": AGENT_MSG.created_at.isoformat().replace("+00:00", "Z"),
        "isAiEnabled": CONVERSATION.ai_enabled,
        "agentName": AGENT.name,
        "organizationId": AGENT.organization_id,
        "userName": c.name,
        "userEmail": c.email,
        "userPhoneNumber": c.phone_number,
    }
    return {k: v for k, v in d.items() if v is not None}


def stdlib_json() -> bytes:
    return json.dumps(as_dict(), ensure_ascii=False, separators=(",", ":")).encode()


def orjson_dict() -> bytes:
    return orjson.dumps(as_dict())


class PydanticPayload(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)
    event_type: str
    message_id: str
    user_message_id: str
    user_message: str
    agent_response: str
    agent_id: str
    conversation_id: str
    channel: str
    created_at: datetime
    is_ai_enabled: bool
    agent_name: str | None = None
    organization_id: str | None = None
    user_name: str | None = None
    user_email: str | None = None
    user_phone_number: str | None = None


def pydantic_v2() -> bytes:
    c = CONVERSATION.contact
    return (
        PydanticPayload(
            event_type=E.value,
            message_id=AGENT_MSG.id,
            user_message_id=USER_MSG.id,
            user_message=USER_MSG.text,
            agent_response=AGENT_MSG.text,
            agent_id=AGENT.id,
            conversation_id=CONVERSATION.id,
            channel=CONVERSATION.channel,
            created_at=AGENT_MSG.created_at,
            is_ai_enabled=CONVERSATION.ai_enabled,
            agent_name=AGENT.name,
            organization_id=AGENT.organization_id,
            user_name=c.name,
            user_email=c.email,
            user_phone_number=c.phone_number,
        )
        .model_dump_json(by_alias=True, exclude_none=True)
        .encode()
    )


def main() -> None:
    args = parser(__doc__).parse_args()
    rounds = 3 if args.quick else args.rounds
    min_time = 0.05 if args.quick else 0.3
    # same content from every contender
    assert (
        json.loads(ours())
        == json.loads(stdlib_json())
        == json.loads(orjson_dict())
        == json.loads(pydantic_v2())
    )
    contenders = [
        ("floor: msgspec encodes a prebuilt Struct", floor),
        ("webhook-plugin: build Struct + encode", ours),
        ("orjson: build dict + dumps", orjson_dict),
        ("stdlib json: build dict + dumps", stdlib_json),
        ("pydantic v2: build model + model_dump_json", pydantic_v2),
    ]
    results = {name: per_op_ns(fn, rounds=rounds, min_time=min_time) for name, fn in contenders}
    ours_ns = results["webhook-plugin: build Struct + encode"]
    floor_ns = results["floor: msgspec encodes a prebuilt Struct"]
    rows = [
        [
            name,
            f"{ns / 1000:.2f}",
            f"{1e9 / ns:,.0f}",
            f"{ns / floor_ns:.2f}x",
            f"{ns / ours_ns:.2f}x",
        ]
        for name, ns in results.items()
    ]
    emit(
        args,
        f"bench_encoding: one AGENT_USER_MESSAGE payload, {len(ours())} bytes ({environment()}), median of {rounds} rounds",
        ["path", "us/op", "ops/s", "vs floor", "time vs ours"],
        rows,
        {
            "ours vs floor (target <= 1.3x)": f"{ours_ns / floor_ns:.2f}x",
            "stdlib json / ours (target >= 5x)": f"{results['stdlib json: build dict + dumps'] / ours_ns:.2f}x",
            "orjson / ours (target >= 1.0x)": f"{results['orjson: build dict + dumps'] / ours_ns:.2f}x",
        },
    )


if __name__ == "__main__":
    main()
