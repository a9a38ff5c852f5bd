"""The console's session and the web-security rules every console answer follows.

The session is a cookie holding a small JSON object signed with HMAC-SHA256
(``HttpOnly``, ``SameSite=Strict``, ``Secure`` over TLS): whether the visitor
signed in, when, and the CSRF token that every state-changing form must send
back. The signing key is random and kept in the database
(:meth:`~..chat_store.ChatStore.session_key`), so that every process serving
the same database accepts the same sessions; it is never derived from the
token, so a cookie tells a guesser nothing about the token; and a server
started with another token makes a new key, which ends every session.
Without a token (loopback only, no sign-in) the session only carries the
CSRF token.

:class:`ConsoleGuard` is pure ASGI middleware: it reads the session, sends a
visitor who has not signed in to ``/login``, writes the cookie back when the
session changed, and adds the security headers (a ``Content-Security-Policy``
that allows no inline script and no other origin, ``X-Frame-Options: DENY``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from typing import Any, Final
from urllib.parse import parse_qs, quote

import msgspec
from starlette.requests import Request, cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..chat.middleware import STATE_KEY

__all__ = [
    "COOKIE_NAME",
    "CSP",
    "ConsoleGuard",
    "FormRefused",
    "Session",
    "SessionCodec",
    "read_form",
    "session_of",
]

COOKIE_NAME: Final = "webhook_plugin_session"
#: a signed-in session lasts this long (seconds), then the token is asked again
MAX_AGE: Final = 12 * 3600
#: paths served without a session (the sign-in page and what it needs)
PUBLIC_PATHS: Final = ("/login", "/static/", "/openapi.json", "/favicon.ico")

CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS: Final = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
_SCOPE_KEY: Final = "webhook_plugin.console.session"
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(dict[str, Any]).decode


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionCodec:
    """Signs and checks session cookies: ``base64(json) "." base64(hmac)``.

    :param key: the signing key (random, see the module's docstring).
    """

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()

    def dumps(self, data: dict[str, Any]) -> str:
        payload = _b64(_encode(data)).encode()
        return f"{payload.decode()}.{_b64(self._sign(payload))}"

    def loads(self, value: str) -> dict[str, Any] | None:
        """The session in a cookie, or None when it is forged, damaged or not ours."""
        payload, _, signature = value.partition(".")
        try:
            given = _unb64(signature)
            if not hmac.compare_digest(given, self._sign(payload.encode())):
                return None
            return _decode(_unb64(payload))
        except (binascii.Error, ValueError, msgspec.DecodeError):
            return None


class Session:
    """One visitor's session: sign-in state, CSRF token and a one-time notice."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = dict(data or {})
        self.changed = False
        self.ended = False
        #: the id of the session that :meth:`sign_out` ended
        self.ended_sid: object = None

    @property
    def signed_in(self) -> bool:
        return bool(self.data.get("auth"))

    @property
    def csrf(self) -> str:
        token = self.data.get("csrf")
        if not isinstance(token, str) or len(token) < 32:
            token = secrets.token_urlsafe(32)
            self.data["csrf"] = token
            self.changed = True
        return token

    def csrf_matches(self, given: str) -> bool:
        expected = self.data.get("csrf")
        return isinstance(expected, str) and hmac.compare_digest(given.encode(), expected.encode())

    def sign_in(self) -> None:
        """A new session (new id, new CSRF token): nothing from before sign-in carries over."""
        self.data = {
            "auth": True,
            "iat": int(time.time()),
            "sid": secrets.token_urlsafe(16),
            "csrf": secrets.token_urlsafe(32),
        }
        self.changed = True

    def sign_out(self) -> None:
        self.ended_sid = self.data.get("sid")
        self.data = {}
        self.changed = self.ended = True

    def flash(self, kind: str, text: str) -> None:
        """A notice for the next page this visitor sees (after a redirect)."""
        self.data["flash"] = {"kind": kind, "text": text}
        self.changed = True

    def pop_flash(self) -> dict[str, str] | None:
        notice = self.data.pop("flash", None)
        if notice is not None:
            self.changed = True
        return notice if isinstance(notice, dict) else None


def session_of(request: Request) -> Session:
    return request.scope[_SCOPE_KEY]  # type: ignore[no-any-return]


class FormRefused(Exception):
    """A state-changing request without a valid CSRF token, or not a form at all."""


async def read_form(request: Request, *, max_fields: int = 100) -> dict[str, list[str]]:
    """The fields of a form POST, once its CSRF token is checked.

    Every state-changing console route reads its form through this.

    :raises FormRefused: not ``application/x-www-form-urlencoded``, undecodable,
        or without the session's CSRF token.
    """
    ctype = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise FormRefused("not a form")
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise FormRefused("sent from another site")
    try:
        fields = parse_qs(
            (await request.body()).decode(), keep_blank_values=True, max_num_fields=max_fields
        )
    except (UnicodeDecodeError, ValueError):
        raise FormRefused("an undecodable form") from None
    given = fields.get("csrf", [""])[0]
    if not session_of(request).csrf_matches(given):
        raise FormRefused("no valid CSRF token")
    return fields


class ConsoleGuard:
    """Session, sign-in and security headers for the console's pages (pure ASGI).

    :param app: the console's routes.
    :param api_token: when set, every path but :data:`PUBLIC_PATHS` needs a
        signed-in session; without it nobody signs in.
    """

    def __init__(self, app: ASGIApp, api_token: str | None) -> None:
        self.app = app
        self.api_token = api_token
        #: until the runtime has read the database's key (an app not started)
        self._key = secrets.token_bytes(32)
        self._codec = SessionCodec(self._key)
        #: sessions signed out in this process, until they would expire anyway
        self._revoked: dict[str, float] = {}

    def codec(self, scope: Scope) -> SessionCodec:
        """The codec of the database's key (the running pipeline holds it)."""
        pipeline = scope.get("state", {}).get(STATE_KEY)
        key = getattr(pipeline, "session_key", None)
        if isinstance(key, bytes) and key is not self._key:
            self._key, self._codec = key, SessionCodec(key)
        return self._codec

    def _load(self, scope: Scope) -> Session:
        cookie = ""
        for name, value in scope["headers"]:
            if name == b"cookie":
                cookie = cookie_parser(value.decode("latin-1")).get(COOKIE_NAME, "")
                break
        data = self.codec(scope).loads(cookie) if cookie else None
        if data is not None and data.get("auth"):
            iat = data.get("iat")
            expired = not isinstance(iat, int) or not 0 <= time.time() - iat <= MAX_AGE
            if expired or data.get("sid") in self._revoked:
                data = None
        return Session(data)

    def _cookie(self, session: Session, scope: Scope) -> bytes:
        flags = "; Path=/; HttpOnly; SameSite=Strict"
        if scope.get("scheme") == "https":
            flags += "; Secure"
        if session.ended:
            return f"{COOKIE_NAME}=; Max-Age=0{flags}".encode()
        return f"{COOKIE_NAME}={self.codec(scope).dumps(session.data)}{flags}".encode()

    def _revoke(self, sid: object) -> None:
        """Refuse a signed-out session's cookie from now on, should it be sent again.

        Process-local: another process serving the same config accepts it until
        it expires (:data:`MAX_AGE`); the browser itself has dropped it.
        """
        if isinstance(sid, str):
            now = time.time()
            self._revoked = {k: t for k, t in self._revoked.items() if t > now}
            self._revoked[sid] = now + MAX_AGE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        session = self._load(scope)
        scope[_SCOPE_KEY] = session
        path: str = scope["path"]
        public = path == "/login" or path.startswith(PUBLIC_PATHS)
        if self.api_token and not session.signed_in and not public:
            target = path + (
                "?" + scope["query_string"].decode("latin-1") if scope["query_string"] else ""
            )
            location = "/login" if path == "/" else f"/login?next={quote(target, safe='')}"
            await self._send_redirect(send, location)
            return

        cache = b"public, max-age=600" if path.startswith("/static/") else b"no-store"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [h for h in _HEADERS if h[0] not in names]
                if b"cache-control" not in names:  # pages may hold a fresh secret
                    headers.append((b"cache-control", cache))
                if session.ended:
                    self._revoke(session.ended_sid)
                if session.changed:
                    headers.append((b"set-cookie", self._cookie(session, scope)))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _send_redirect(self, send: Send, location: str) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [
                    (b"location", location.encode("latin-1")),
                    (b"content-length", b"0"),
                    (b"cache-control", b"no-store"),
                    *_HEADERS,
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})
