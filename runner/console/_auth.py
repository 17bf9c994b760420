"""Who may open the console: an operator's token (never a client's), a login session kept in
memory behind an HttpOnly, SameSite=Strict cookie with a CSRF token, and the transport rule
(HTTPS, or a loopback client, unless `server.console.allow_plain_http`)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from policies import ConsoleSettings

COOKIE = "sandgate_console"
MAX_LOGINS = 1024
"""Console logins kept at once; the oldest is dropped past it."""

Transport = Literal["ok", "plain_http"]


@dataclass(frozen=True, slots=True)
class Login:
    """One operator's console login.

    Attributes:
        operator: The operator's name (their answers are audited as `operator:NAME`).
        csrf: The token every form POST of this login must carry.
        expires_at: Unix time the login ends.
    """

    operator: str
    csrf: str
    expires_at: float


def operator_of(settings: ConsoleSettings, token: str) -> str | None:
    """The operator whose `token_sha256` is the sha256 of `token`, or None (constant time)."""
    digest = hashlib.sha256(token.encode("utf-8")).hexdigest()
    found = None
    for operator in settings.operators:
        if hmac.compare_digest(operator.token_sha256, digest):
            found = operator.name
    return found


def transport_allowed(
    settings: ConsoleSettings, *, scheme: str, client_host: str | None
) -> Transport:
    """Whether the console may answer this request: over HTTPS, from a loopback client (the
    request never left this host), or anywhere when `allow_plain_http` says so."""
    if scheme in ("https", "wss") or settings.allow_plain_http:
        return "ok"
    if client_host is not None and is_loopback(client_host):
        return "ok"
    return "plain_http"


PLAIN_HTTP_REFUSED = (
    "sandgate console: refused over plain HTTP from {client}: the operator token and session "
    "cookie would cross the network unencrypted. Open the console over HTTPS (put a TLS "
    "proxy in front of `sandgate serve`), or from this host (http://127.0.0.1:PORT/console), "
    "or set `server.console.allow_plain_http: true` in the policy if the network is trusted."
)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Logins:
    """Console logins by their cookie value, in this process (a restart logs everyone out).

    Args:
        clock: Unix time source.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._logins: dict[str, Login] = {}

    def open(self, operator: str, lasts_s: float) -> tuple[str, Login]:
        """A new login for `operator`: its cookie value and the login."""
        cookie = secrets.token_urlsafe(32)
        login = Login(operator, secrets.token_urlsafe(24), self._clock() + lasts_s)
        with self._lock:
            self._logins[cookie] = login
            now = self._clock()
            for key in [k for k, v in self._logins.items() if v.expires_at <= now]:
                del self._logins[key]
            while len(self._logins) > MAX_LOGINS:
                del self._logins[next(iter(self._logins))]
        return cookie, login

    def get(self, cookie: str | None, operators: set[str]) -> Login | None:
        """The login of `cookie`, while it lasts and its operator is still in the policy."""
        if not cookie:
            return None
        with self._lock:
            login = self._logins.get(cookie)
            if login is None:
                return None
            if login.expires_at <= self._clock() or login.operator not in operators:
                del self._logins[cookie]
                return None
            return login

    def close(self, cookie: str | None) -> None:
        """End a login (log out)."""
        if cookie:
            with self._lock:
                self._logins.pop(cookie, None)


def csrf_ok(login: Login, sent: object) -> bool:
    """Whether a form carried this login's CSRF token."""
    return isinstance(sent, str) and hmac.compare_digest(login.csrf, sent)
