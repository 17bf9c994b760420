"""The operator console at `/console`: approvals, audit trail, live usage and the policy.

Served by `sandgate serve --transport streamable-http` when the policy has `server.console`;
a client of the service's operator API (`runner/operator/`), never a second path to the
gate or the stores.
"""

from ._app import PREFIX, Console
from ._auth import PLAIN_HTTP_REFUSED, Login, Logins, is_loopback, operator_of, transport_allowed

__all__ = [
    "PLAIN_HTTP_REFUSED",
    "PREFIX",
    "Console",
    "Login",
    "Logins",
    "is_loopback",
    "operator_of",
    "transport_allowed",
]
