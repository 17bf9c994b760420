"""The egress proxy on its own: a real mitmdump, real loopback servers, host-side clients
with a lease; the policy here is a plain function (the policy layer's is tested apart)."""

from __future__ import annotations

import base64
import json
import os
import signal

import anyio
import pytest

from policies import EgressRule
from policies._egress import compile_egress
from sandboxes import Egress
from sandboxes.egress import BrokeredSecret, Decide, EgressProxy, EgressVerdict

from ._client import fetch, fetch_incomplete
from ._origin import Origin

pytestmark = pytest.mark.anyio

RULE = "/tools/run_code/quotas/network/allow/0"
QUOTA = "/tools/run_code/quotas/network"


def allow(*names: str) -> Decide:
    """A policy allowing exactly `names` (any port, any address)."""

    def decide(host: str, port: int, address: str | None) -> EgressVerdict:
        if host in names:
            return EgressVerdict(True, RULE, f"{host} is allowed")
        return EgressVerdict(False, "/tools/run_code/quotas/network", f"no rule allows {host}")

    return decide


async def test_allowed_http_and_https_reach_the_named_host(
    proxy: EgressProxy, origin: Origin
) -> None:
    lease = await proxy.lease(decide=allow("api.test"))
    plain = await fetch(lease, f"http://api.test:{origin.http_port}/echo?x=1")
    secure = await fetch(lease, f"https://api.test:{origin.https_port}/echo")
    usage = await proxy.release(lease)

    assert (plain.status, secure.status) == (200, 200)
    seen = json.loads(secure.body)
    assert seen["headers"]["Host"] == f"api.test:{origin.https_port}"
    assert "Proxy-Authorization" not in json.loads(plain.body)["headers"]
    assert [(c.host, c.address, c.allowed) for c in usage.connections] == [
        ("api.test", "127.0.0.1", True),
        ("api.test", "127.0.0.1", True),
    ]
    assert usage.bytes_down > len(secure.body) + len(plain.body)
    assert usage.bytes_up > 0


async def test_a_refused_request_and_connect_carry_the_rule(
    proxy: EgressProxy, origin: Origin
) -> None:
    lease = await proxy.lease(decide=allow("api.test"))
    plain = await fetch(lease, f"http://other.test:{origin.http_port}/")
    secure = await fetch(lease, f"https://other.test:{origin.https_port}/")
    usage = await proxy.release(lease)

    text = f"egress to other.test:{{}} refused by policy rule {QUOTA}"
    assert (plain.status, plain.refused) == (403, text.format(origin.http_port))
    assert (secure.status, secure.refused) == (403, text.format(origin.https_port))
    assert [(c.allowed, c.address, c.reason) for c in usage.refused] == [
        (False, None, "no rule allows other.test")
    ] * 2


async def test_the_name_is_resolved_once_and_the_connection_pinned(
    proxy: EgressProxy, origin: Origin
) -> None:
    asked: list[tuple[str, int, str | None]] = []

    def decide(host: str, port: int, address: str | None) -> EgressVerdict:
        asked.append((host, port, address))
        allowed = address is None or address != "127.0.0.1"
        return EgressVerdict(allowed, "/rule", "loopback needs a rule naming it")

    lease = await proxy.lease(decide=decide)
    answer = await fetch(lease, f"http://rebind.test:{origin.http_port}/")
    await proxy.release(lease)

    assert answer.status == 403
    assert asked == [
        ("rebind.test", origin.http_port, None),
        ("rebind.test", origin.http_port, "127.0.0.1"),
    ]


async def test_a_name_the_policy_refuses_is_never_resolved(
    proxy: EgressProxy, origin: Origin
) -> None:
    lease = await proxy.lease(decide=allow())
    answer = await fetch(lease, f"http://does-not-exist.invalid:{origin.http_port}/")
    usage = await proxy.release(lease)

    assert answer.status == 403
    assert usage.connections[0].reason == "no rule allows does-not-exist.invalid"


async def test_the_byte_quota_cuts_a_transfer_midway(proxy: EgressProxy, origin: Origin) -> None:
    lease = await proxy.lease(decide=allow("api.test"), byte_budget=200_000, quota_rule=QUOTA)
    arrived = await fetch_incomplete(lease, f"https://api.test:{origin.https_port}/bytes/2000000")
    after = await fetch(lease, f"http://api.test:{origin.http_port}/echo")
    usage = await proxy.release(lease)

    assert 0 < arrived < 200_000
    assert usage.connections[0].cut is True
    assert usage.bytes_up + usage.bytes_down <= 200_000
    assert (after.status, after.refused) == (
        403,
        f"egress to api.test:{origin.http_port} refused by policy rule {QUOTA}",
    )


async def test_connections_per_lease_are_counted(proxy: EgressProxy, origin: Origin) -> None:
    lease = await proxy.lease(
        decide=allow("api.test", "other.test"), max_connections=1, quota_rule=QUOTA
    )
    first = await fetch(lease, f"http://api.test:{origin.http_port}/")
    second = await fetch(lease, f"http://other.test:{origin.http_port}/")
    usage = await proxy.release(lease)

    assert (first.status, second.status) == (200, 403)
    assert usage.refused[0].reason == "connection quota exhausted (1 per call)"
    assert usage.allowed == 1


def _secret(value: str) -> BrokeredSecret:
    return BrokeredSecret(
        name="token",
        value=value,
        variable="API_TOKEN",
        may_send=lambda host, port: host == "api.test",
        rule="/secrets/0/hosts",
    )


async def test_a_secret_is_substituted_only_for_its_host(
    proxy: EgressProxy, origin: Origin
) -> None:
    lease = await proxy.lease(decide=allow("api.test", "other.test"), secrets=[_secret("s3cr3t")])
    ((variable, placeholder),) = lease.environment
    sent = await fetch(
        lease,
        f"https://api.test:{origin.https_port}/echo?key={placeholder}",
        data=f"token={placeholder}".encode(),
        headers={"Authorization": f"Bearer {placeholder}"},
    )
    await proxy.release(lease)

    seen = origin.received[-1]
    assert variable == "API_TOKEN"
    assert "s3cr3t" not in placeholder
    assert seen["path"] == "/echo?key=s3cr3t"
    assert seen["body"] == "token=s3cr3t"
    assert seen["headers"]["Authorization"] == "Bearer s3cr3t"
    echoed = json.loads(sent.body)  # the host echoed it back: the code gets the placeholder
    assert b"s3cr3t" not in sent.body
    assert echoed["headers"]["Authorization"] == f"Bearer {placeholder}"


@pytest.mark.parametrize("where", ["query", "body", "header"])
async def test_a_placeholder_sent_elsewhere_is_refused(
    proxy: EgressProxy, origin: Origin, where: str
) -> None:
    lease = await proxy.lease(decide=allow("api.test", "other.test"), secrets=[_secret("s3cr3t")])
    ((_, placeholder),) = lease.environment
    url = f"https://other.test:{origin.https_port}/echo"
    data, headers = None, {}
    if where == "query":
        url += f"?leak={placeholder}"
    elif where == "body":
        data = f"leak={placeholder}".encode()
    else:
        headers = {"X-Leak": placeholder}
    answer = await fetch(lease, url, data=data, headers=headers)
    await proxy.release(lease)

    assert answer.status == 403
    assert answer.refused == (
        f"egress to other.test:{origin.https_port} refused by policy rule /secrets/0/hosts"
    )
    assert b"s3cr3t" not in answer.body


async def test_released_credentials_stop_working(proxy: EgressProxy, origin: Origin) -> None:
    lease = await proxy.lease(decide=allow("api.test"))
    await proxy.release(lease)

    answer = await fetch(lease, f"http://api.test:{origin.http_port}/")

    assert answer.status == 407


async def test_the_unix_socket_is_the_same_proxy(proxy: EgressProxy, origin: Origin) -> None:
    lease = await proxy.lease(decide=allow("api.test"))
    assert lease.socket is not None
    stream = await anyio.connect_unix(lease.socket)
    async with stream:
        auth = base64.b64encode(lease.credentials.encode()).decode()
        await stream.send(
            f"GET http://api.test:{origin.http_port}/echo HTTP/1.1\r\n"
            f"Host: api.test:{origin.http_port}\r\nProxy-Authorization: Basic {auth}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        received = b""
        with anyio.fail_after(20):
            try:
                while True:
                    received += await stream.receive()
            except anyio.EndOfStream:
                pass
    await proxy.release(lease)

    assert received.startswith(b"HTTP/1.1 200")


async def test_a_killed_proxy_fails_the_live_lease_and_the_next_lease_works(
    proxy: EgressProxy, origin: Origin
) -> None:
    live = await proxy.lease(decide=allow("api.test"))
    pid = proxy.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(OSError):
        await fetch(live, f"http://api.test:{origin.http_port}/")

    following = await proxy.lease(decide=allow("api.test"))
    answer = await fetch(following, f"http://api.test:{origin.http_port}/")
    lost, fine = await proxy.release(live), await proxy.release(following)

    assert answer.status == 200
    assert proxy.pid not in (None, pid)
    assert lost.failed is not None and "exited" in lost.failed
    assert fine.failed is None


async def test_under_the_policy_a_name_pinned_to_loopback_is_refused(
    proxy: EgressProxy, origin: Origin
) -> None:
    route = compile_egress(EgressRule(allow=["rebind.test"]), QUOTA, [])
    lease = await proxy.lease(decide=route.decide)
    answer = await fetch(lease, f"http://rebind.test:{origin.http_port}/echo")
    usage = await proxy.release(lease)

    assert answer.status == 403
    (refused,) = usage.refused
    assert (refused.address, refused.rule) == ("127.0.0.1", QUOTA)
    assert refused.reason.startswith("rebind.test resolved to 127.0.0.1, a loopback address")


@pytest.mark.parametrize("host", ["metadata.test", "169.254.169.254"])
async def test_under_the_policy_the_metadata_address_is_refused_even_for_any_host(
    proxy: EgressProxy, host: str
) -> None:
    route = compile_egress(EgressRule(allow=["*"]), QUOTA, [])
    lease = await proxy.lease(decide=route.decide)
    answer = await fetch(lease, f"http://{host}/latest/meta-data/")
    usage = await proxy.release(lease)

    assert (answer.status, answer.refused) == (
        403,
        f"egress to {host}:80 refused by policy rule {QUOTA}",
    )
    assert "a cloud metadata address" in usage.refused[0].reason


async def _raw_tunnel(proxy_port: int, lease: Egress, target: str, payload: bytes) -> bytes:
    """CONNECT to `target` with the lease's credentials, send `payload` raw, read to the end."""
    auth = base64.b64encode(lease.credentials.encode()).decode()
    stream = await anyio.connect_tcp("127.0.0.1", proxy_port)
    async with stream:
        await stream.send(
            f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
            f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode()
        )
        received = b""
        with anyio.fail_after(20):
            while b"\r\n\r\n" not in received:
                received += await stream.receive()
            assert received.startswith(b"HTTP/1.1 200"), received
            await stream.send(payload)
            try:
                while True:
                    received += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    return received.partition(b"\r\n\r\n")[2]


async def test_raw_bytes_in_a_tunnel_are_cut_not_carried(
    proxy: EgressProxy, origin: Origin
) -> None:
    lease = await proxy.lease(decide=allow("api.test"))
    after_connect = await _raw_tunnel(
        lease.port, lease, f"api.test:{origin.http_port}", b"\x00\x01\x02 raw bytes\r\n\r\n"
    )
    await proxy.release(lease)

    assert after_connect == b""  # carried, the origin would have answered 400


async def test_a_protocol_upgrade_is_refused(proxy: EgressProxy, origin: Origin) -> None:
    lease = await proxy.lease(decide=allow("api.test"))
    answer = await fetch(
        lease,
        f"http://api.test:{origin.http_port}/echo",
        headers={"Upgrade": "websocket", "Connection": "Upgrade"},
    )
    await proxy.release(lease)

    assert answer.status == 403
    assert answer.refused == f"egress to api.test:{origin.http_port} refused"
