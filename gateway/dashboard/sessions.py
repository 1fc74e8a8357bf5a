"""Dashboard sign-in state: signed session cookies, CSRF tokens, sign-in throttling.

A gateway key is presented once (a POST form) and exchanged for a session cookie; the
key itself never travels again and is never stored.  The cookie is

    base64url(json {sid, role, name, bind, exp}) "." base64url(HMAC-SHA256(secret, payload))

so any worker process holding the same secret verifies it without shared memory.  The
secret is derived from the admin key's hash (`metrics.admin_key`) when one is set: every
worker and every instance with the same configuration derives the same one, and
changing the admin key signs everyone out.  Without an admin key the secret is random
per process, so sessions are per worker (a request landing on another worker asks to
sign in again).

`bind` ties a key holder's session to the key it was opened with (an HMAC of the key's
hash, never the hash itself): revoking or rotating the key in the YAML ends the session
at the next request after the reload.  Sign-out adds the session id to an in-memory
revocation list of this process until the session would have expired anyway; the
browser's cookie is deleted too.

CSRF: each POST carries a hidden `csrf` field equal to HMAC(secret, "csrf:" + sid); the
sign-in form, which has no session yet, uses a short-lived pre-session cookie the same
way.  Cookies are HttpOnly, SameSite=Strict, Path=/dashboard, and Secure when the
request came over HTTPS (directly, or `X-Forwarded-Proto: https` from a proxy).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Final

from aiohttp import web

COOKIE: Final = "gw_session"
PRE_COOKIE: Final = "gw_signin"  # binds the sign-in form's CSRF token before any session exists
PATH: Final = "/dashboard"
SESSION_TTL: Final = 8 * 3600.0  # seconds a session lives; the browser forgets it at the same time
PRE_TTL: Final = 3600.0
OPERATOR: Final = "operator"
HOLDER: Final = "key"

SIGNIN_ATTEMPTS: Final = 10  # sign-in POSTs per client address...
SIGNIN_WINDOW: Final = 60.0  # ...per this many seconds
_MAX_CLIENTS: Final = 10_000  # addresses tracked at once: a flood of addresses cannot grow memory unbounded


@dataclass(frozen=True, slots=True)
class Session:
    sid: str
    role: str  # OPERATOR or HOLDER
    name: str  # the key's name (key holder); "admin" for the operator
    bind: str  # key holder: HMAC of the key's hash at sign-in; operator: ""
    exp: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Issues and verifies session cookies for one process (see the module docstring)."""

    def __init__(self, admin_key_sha256: str | None) -> None:
        self._now = time.time
        self._random = secrets.token_bytes(32)
        self._revoked: dict[str, float] = {}  # sid -> when it would expire anyway
        self.secret = self._derive(admin_key_sha256)

    def _derive(self, admin_key_sha256: str | None) -> bytes:
        if admin_key_sha256 is None:
            return self._random  # per process: sessions are per worker
        return hmac.new(bytes.fromhex(admin_key_sha256), b"gateway dashboard sessions v1", hashlib.sha256).digest()

    def follow(self, admin_key_sha256: str | None) -> None:
        """The configuration in force may have a new admin key (a reload): re-derive."""
        self.secret = self._derive(admin_key_sha256)

    def _mac(self, *parts: str) -> str:
        return hmac.new(self.secret, "\x00".join(parts).encode(), hashlib.sha256).hexdigest()

    def bind(self, key_sha256: str) -> str:
        return self._mac("bind", key_sha256)[:32]

    # -- sessions ------------------------------------------------------------------------

    def issue(self, role: str, name: str, bind: str = "") -> tuple[Session, str]:
        session = Session(secrets.token_urlsafe(18), role, name, bind, self._now() + SESSION_TTL)
        payload = _b64(json.dumps([session.sid, role, name, bind, session.exp]).encode())
        return session, f"{payload}.{self._mac('session', payload)}"

    def verify(self, cookie: str | None) -> Session | None:
        if not cookie or cookie.count(".") != 1:
            return None
        payload, mac = cookie.split(".")
        if not hmac.compare_digest(mac, self._mac("session", payload)):
            return None
        try:
            sid, role, name, bind, exp = json.loads(_unb64(payload))
        except (ValueError, TypeError):
            return None
        if not isinstance(exp, int | float) or exp < self._now() or sid in self._revoked:
            return None
        return Session(str(sid), str(role), str(name), str(bind), float(exp))

    def revoke(self, session: Session) -> None:
        now = self._now()
        self._revoked = {sid: exp for sid, exp in self._revoked.items() if exp > now}  # forget the lapsed
        self._revoked[session.sid] = session.exp

    def csrf(self, sid: str) -> str:
        return self._mac("csrf", sid)

    def csrf_ok(self, sid: str, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(self.csrf(sid), str(presented))

    # -- the sign-in form's pre-session ----------------------------------------------------

    def pre_session(self, request: web.Request) -> tuple[str, bool]:
        """(the sign-in form's nonce, whether it is new and must be set as a cookie)."""
        nonce = request.cookies.get(PRE_COOKIE, "")
        if len(nonce) == 32 and nonce.isalnum():
            return nonce, False
        return secrets.token_hex(16), True


def secure(request: web.Request) -> bool:
    """HTTPS directly, or behind a proxy that says so."""
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def set_cookie(response: web.StreamResponse, request: web.Request, name: str, value: str, max_age: float) -> None:
    response.set_cookie(name, value, max_age=int(max_age), path=PATH, httponly=True, samesite="Strict",
                        secure=secure(request))  # fmt: skip


def clear_cookie(response: web.StreamResponse, request: web.Request, name: str) -> None:
    response.del_cookie(name, path=PATH, httponly=True, samesite="Strict", secure=secure(request))


class SignInThrottle:
    """At most SIGNIN_ATTEMPTS sign-in POSTs per client address per SIGNIN_WINDOW (a
    rolling window), successful or not: key guessing is slowed to a crawl."""

    def __init__(self, attempts: int = SIGNIN_ATTEMPTS, window: float = SIGNIN_WINDOW) -> None:
        self.attempts, self.window = attempts, window
        self._seen: dict[str, deque[float]] = {}

    def allow(self, client: str, now: float | None = None) -> float | None:
        """None when this attempt may go ahead (it is counted); else seconds to wait."""
        now = time.monotonic() if now is None else now
        seen = self._seen.get(client)
        if seen is None:
            if len(self._seen) >= _MAX_CLIENTS:
                self._forget(now)
            seen = self._seen[client] = deque()
        while seen and seen[0] <= now - self.window:
            seen.popleft()
        if len(seen) >= self.attempts:
            return seen[0] + self.window - now
        seen.append(now)
        return None

    def _forget(self, now: float) -> None:
        stale = [c for c, seen in self._seen.items() if not seen or seen[-1] <= now - self.window]
        for client in stale:
            del self._seen[client]
        if len(self._seen) >= _MAX_CLIENTS:  # all active: drop the oldest half rather than grow
            for client in list(self._seen)[: _MAX_CLIENTS // 2]:
                del self._seen[client]
