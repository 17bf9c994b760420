"""The egress proxy: the one way out of a sandbox whose run may reach the network.

Sandbox-layer infrastructure: it knows no policy. The server makes one `EgressProxy`; each
run that may reach the network gets a lease (a `sandboxes.Egress`), whose `decide` callback
is the run's policy; the engine lends the guest a path to the proxy (`Egress.socket` or
`Egress.host:port`, see the `Egress` docstring); the run's usage comes back on release.

    proxy = EgressProxy(state_dir, hosts={"api.test": "127.0.0.1"}, upstream_ca=test_ca)
    await proxy.start()              # mitmdump from `sandgate setup egress`'s venv
    lease = await proxy.lease(
        decide=lambda host, port, address: EgressVerdict(host == "api.test", "/rule", "why"),
        byte_budget=1_000_000,       # up + down; the transfer that passes it is cut
        max_connections=10,          # destinations per lease
        quota_rule="/tools/run_code/quotas/network",
        secrets=[BrokeredSecret(name="gh", value="s3cret", variable="GH_TOKEN",
                                may_send=lambda host, port: host == "api.test")],
    )
    # lease.proxy_url() -> "http://run-…:…@127.0.0.1:PORT"; lease.socket: the same proxy on
    # a Unix socket; lease.ca_certificate: the per-server CA (PEM) the guest must trust;
    # lease.environment: (("GH_TOKEN", "sandgate-secret-gh-…"),) for the guest.
    usage = await proxy.release(lease)   # EgressUsage: connections, bytes, refused, cut
    await proxy.aclose()

What the proxy does with a request (HTTP, or HTTPS through CONNECT with TLS interception by
the per-server CA): it asks `decide(host, port, None)` (refused: the name is never resolved),
resolves the name once (the `hosts` override first), asks `decide(host, port, address)`, and
connects to that address only (SNI and `Host` keep the name). A refused request or CONNECT
gets HTTP 403 with header `Sandgate-Refused: egress to HOST:PORT refused by policy rule
POINTER` (the same text is the 403's reason phrase, so a failed CONNECT shows it too);
unknown or released credentials get 407. Placeholders of brokered secrets are replaced by the
real value in the URL, headers and body of requests to hosts the secret may go to; a request
carrying a placeholder anywhere else is refused (rule: the secret's pointer), and the
response to a request that carried the value has it replaced by the placeholder. Protocol
upgrades are refused and raw TCP in a tunnel is cut (their bytes would go uncounted). If
mitmdump dies, live leases fail closed (their connections fail; `EgressUsage.failed` says
why) and the next `lease()` starts a new one. A policy-free `decide` for engine tests:
`lambda host, port, address: EgressVerdict(host == "api.test", "/test", "")`; the test
servers and CA of `tests/egress/_origin.py` (`start_origin`) can be reused.
"""

from ._errors import EgressUnavailable
from ._proxy import EgressProxy, egress_venv, mitmdump_path
from ._resolve import normal_host, resolve
from ._setup import prepare_egress
from ._values import (
    MITMPROXY_REQUIREMENT,
    BrokeredSecret,
    Decide,
    EgressConnection,
    EgressUsage,
    EgressVerdict,
)

__all__ = [
    "MITMPROXY_REQUIREMENT",
    "BrokeredSecret",
    "Decide",
    "EgressConnection",
    "EgressProxy",
    "EgressUnavailable",
    "EgressUsage",
    "EgressVerdict",
    "egress_venv",
    "mitmdump_path",
    "normal_host",
    "prepare_egress",
    "resolve",
]
