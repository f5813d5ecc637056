"""Who is looking at the dashboard: a signed session cookie, CSRF tokens, one-time links.

The admin token signs a person in; the session is a cookie signed with a secret of this
server process (HMAC-SHA256), so a restart signs everyone out and nothing about sessions is
stored. Each session has a random id; a form's CSRF token is the HMAC of that id, so a token
from another session (or from before signing in again) is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

from dispatchd.engine.agents import tokens_equal

COOKIE = "dispatchd_session"
SESSION_S = 12 * 3600
ONCE_S = 15 * 60  # how long a one-time sign-in link stays usable


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


@dataclass
class Sessions:
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    _once: dict[str, float] = field(default_factory=dict)

    def _sign(self, purpose: str, value: str) -> str:
        mac = hmac.new(self.secret, f"{purpose}:{value}".encode(), hashlib.sha256)
        return _b64(mac.digest())

    @staticmethod
    def check_token(given: str, admin_token: str) -> bool:
        """The admin token, compared in constant time."""
        return bool(given) and tokens_equal(given, admin_token)

    def issue(self, now: float | None = None) -> str:
        """A new session's cookie value: `<id>.<expiry>.<signature>`."""
        sid = secrets.token_urlsafe(18)
        expires = int((now or time.time()) + SESSION_S)
        body = f"{sid}.{expires}"
        return f"{body}.{self._sign('session', body)}"

    def session_id(self, cookie: str | None, now: float | None = None) -> str | None:
        """The id of a valid, unexpired session cookie; None otherwise."""
        if not cookie or cookie.count(".") != 2:
            return None
        sid, expires, signature = cookie.split(".")
        if not hmac.compare_digest(signature, self._sign("session", f"{sid}.{expires}")):
            return None
        if not expires.isdigit() or int(expires) < (now or time.time()):
            return None
        return sid

    def csrf(self, sid: str) -> str:
        return self._sign("csrf", sid)

    def csrf_ok(self, sid: str, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(self.csrf(sid), given or "")

    def once(self, now: float | None = None) -> str:
        """A sign-in token valid once, for ONCE_S seconds (printed by `dispatchd serve`)."""
        now = now or time.time()
        self._once = {k: v for k, v in self._once.items() if v > now}
        token = secrets.token_urlsafe(24)
        self._once[token] = now + ONCE_S
        return token

    def use_once(self, token: str, now: float | None = None) -> bool:
        """True, the first time only, for a one-time token that has not expired."""
        for known in list(self._once):
            if hmac.compare_digest(known, token):
                expires = self._once.pop(known)
                return expires > (now or time.time())
        return False
