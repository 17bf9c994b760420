"""The console's routes: pages rendered on the server (Jinja2), form posts, JSON endpoints."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode

import yaml
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route

from policies import (
    AuditRecord,
    AuditUnavailable,
    ConsoleSettings,
    StateUnavailable,
    UnknownApproval,
)

from ..operator._api import OperatorApi
from ..operator._audit_query import AuditQuery, parse_time
from ..operator._explain import program_of
from . import _highlight
from ._auth import (
    COOKIE,
    PLAIN_HTTP_REFUSED,
    Login,
    Logins,
    csrf_ok,
    operator_of,
    transport_allowed,
)
from ._charts import line_chart

PREFIX = "/console"
AUDIT_PAGE_RECORDS = 200
POLL_MS = 1000
"""How often the approvals page asks for the pending list."""
_STATIC = {"console.css": "text/css", "console.js": "text/javascript"}
_SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
_DECISIONS = ("allow", "deny", "would_deny", "needs_approval")
_EVENTS = ("decision", "outcome", "approval")
_FILTERS = ("grant", "tool", "decision", "status", "event", "session")

Handler = Callable[[Request, Login], Awaitable[Response]]


class Console:
    """The console of one server.

    Args:
        api: The operator API of the service it shows.
        settings: The policy's `server.console` in force (None: the console is off).
        authenticate: The service's client-token check (a token it knows is refused here).
        clock: Unix time source.
    """

    def __init__(
        self,
        api: OperatorApi,
        settings: Callable[[], ConsoleSettings | None],
        authenticate: Callable[[str], str | None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._api = api
        self._settings = settings
        self._authenticate = authenticate
        self._clock = clock
        self._logins = Logins(clock)
        self._env = Environment(
            loader=PackageLoader("runner.console", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._env.filters["when"] = _when
        self._env.filters["ago"] = lambda t: _duration(self._clock() - t)
        self._env.filters["seconds"] = _duration
        self._env.globals["prefix"] = PREFIX
        self._static = {
            name: resources.files("runner.console").joinpath("static", name).read_bytes()
            for name in _STATIC
        }
        self._static["pygments.css"] = _highlight.stylesheet().encode()

    # -- assembly -------------------------------------------------------------------------

    def mount(self) -> Mount:
        """The console as a route of the HTTP app, at `/console`."""
        page, api = self._page, self._json
        routes = [
            Route("/", self._home),
            Route("/login", self._login_form, methods=["GET"]),
            Route("/login", self._login, methods=["POST"]),
            Route("/logout", page(self._logout), methods=["POST"]),
            Route("/static/{name}", self._asset),
            Route("/approvals", page(self._approvals)),
            Route("/approvals/list", page(self._approvals_list)),
            Route("/approvals/{approval_id}/{verb}", page(self._answer), methods=["POST"]),
            Route("/audit", page(self._audit)),
            Route("/audit/export.jsonl", page(self._export)),
            Route("/audit/{record_id}", page(self._audit_record)),
            Route("/usage", page(self._usage)),
            Route("/sessions/end", page(self._end_session), methods=["POST"]),
            Route("/policy", page(self._policy), methods=["GET"]),
            Route("/policy", page(self._policy), methods=["POST"]),
            Route("/api/approvals", api(self._api_approvals)),
            Route("/api/approvals/{approval_id}", api(self._api_answer), methods=["POST"]),
            Route("/api/audit", api(self._api_audit)),
            Route("/api/usage", api(self._api_usage)),
            Route("/api/policy", api(self._api_policy)),
        ]
        return Mount(PREFIX, routes=routes)

    def _render(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        body = self._env.get_template(name).render(**context)
        return HTMLResponse(body, status_code=status, headers=_SECURITY_HEADERS)

    def _gatekeep(self, request: Request) -> tuple[ConsoleSettings | None, Response | None]:
        """The settings in force, or the response that refuses the request."""
        settings = self._settings()
        if settings is None:
            text = (
                "sandgate console: off. Turn it on with server.console.operators in the policy "
                "(each operator: name and token_sha256)."
            )
            return None, Response(text, 404, headers=_SECURITY_HEADERS, media_type="text/plain")
        client = request.client.host if request.client else None
        if transport_allowed(settings, scheme=request.url.scheme, client_host=client) != "ok":
            text = PLAIN_HTTP_REFUSED.format(client=client or "an unknown address")
            return None, Response(text, 403, headers=_SECURITY_HEADERS, media_type="text/plain")
        origin = request.headers.get("origin")
        own = f"{request.url.scheme}://{request.url.netloc}"
        if request.method == "POST" and origin is not None and origin != own:
            text = (
                f"sandgate console: refused a form sent from {origin!r}; the console takes "
                f"forms only from its own pages ({own})."
            )
            return None, Response(text, 403, headers=_SECURITY_HEADERS, media_type="text/plain")
        return settings, None

    def _page(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            settings, refused = self._gatekeep(request)
            if refused is not None or settings is None:
                return refused or Response(status_code=404)
            operators = {o.name for o in settings.operators}
            login = self._logins.get(request.cookies.get(COOKIE), operators)
            if login is None:
                if request.method != "GET":
                    return self._render(
                        "error.html", 401, message="Your console login ended; log in again."
                    )
                back = quote(
                    request.url.path + ("?" + request.url.query if request.url.query else "")
                )
                return RedirectResponse(f"{PREFIX}/login?next={back}", 303, _SECURITY_HEADERS)
            if request.method == "POST":
                form = await request.form()
                if not csrf_ok(login, form.get("csrf")):
                    return self._render(
                        "error.html",
                        403,
                        message="This form is stale or did not come from the console "
                        "(CSRF token missing or wrong); reload the page and try again.",
                    )
            return await handler(request, login)

        return endpoint

    def _json(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            settings, refused = self._gatekeep(request)
            if refused is not None or settings is None:
                return refused or Response(status_code=404)
            auth = request.headers.get("authorization", "")
            token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
            operator = operator_of(settings, token) if token else None
            if operator is None or self._authenticate(token) is not None:
                detail = (
                    "an operator token is required: send 'Authorization: Bearer TOKEN' with a "
                    "token whose sha256 is in server.console.operators (a client's grant "
                    "token does not open the console)"
                )
                return JSONResponse(
                    {"error": "unauthorized", "detail": detail},
                    401,
                    headers={**_SECURITY_HEADERS, "www-authenticate": 'Bearer realm="console"'},
                )
            return await handler(request, Login(operator, "", float("inf")))

        return endpoint

    # -- login ----------------------------------------------------------------------------

    async def _home(self, request: Request) -> Response:
        _, refused = self._gatekeep(request)
        return refused or RedirectResponse(f"{PREFIX}/approvals", 303, _SECURITY_HEADERS)

    async def _login_form(self, request: Request) -> Response:
        _, refused = self._gatekeep(request)
        if refused is not None:
            return refused
        return self._render("login.html", next=_safe_next(request.query_params.get("next")))

    async def _login(self, request: Request) -> Response:
        settings, refused = self._gatekeep(request)
        if refused is not None or settings is None:
            return refused or Response(status_code=404)
        form = await request.form()
        token = str(form.get("token") or "").strip()
        target = _safe_next(str(form.get("next") or ""))
        if token and self._authenticate(token) is not None:
            message = (
                "That is a client's token (a grant of the policy): it never opens the console. "
                "Use your operator token (server.console.operators)."
            )
            return self._render("login.html", 403, error=message, next=target)
        operator = operator_of(settings, token) if token else None
        if operator is None:
            message = (
                "Unknown operator token. Use the token whose sha256 is listed for you in "
                "server.console.operators."
            )
            return self._render("login.html", 401, error=message, next=target)
        cookie, _login = self._logins.open(operator, settings.session_s)
        response = RedirectResponse(target, 303, _SECURITY_HEADERS)
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=int(settings.session_s),
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def _logout(self, request: Request, login: Login) -> Response:
        self._logins.close(request.cookies.get(COOKIE))
        response = RedirectResponse(f"{PREFIX}/login", 303, _SECURITY_HEADERS)
        response.delete_cookie(COOKIE, path=PREFIX)
        return response

    async def _asset(self, request: Request) -> Response:
        _, refused = self._gatekeep(request)
        if refused is not None:
            return refused
        name = request.path_params["name"]
        if name not in self._static:
            return Response("no such asset", 404, media_type="text/plain")
        media = _STATIC.get(name, "text/css")
        headers = {**_SECURITY_HEADERS, "cache-control": "max-age=300"}
        return Response(self._static[name], media_type=media, headers=headers)

    # -- approvals ------------------------------------------------------------------------

    async def _pending_view(self) -> list[dict[str, Any]]:
        shown = []
        for item in await self._api.pending_approvals():
            args = dict(item.call.args)
            program = program_of(item.call.tool, args)
            code = None
            if program is not None and program.kind == "code":
                code = _highlight.python(program.source)
                args.pop("code", None)
            shown.append(
                {
                    "item": item,
                    "code": code,
                    "args": _highlight.data(args) if args else None,
                }
            )
        return shown

    async def _approvals(self, request: Request, login: Login) -> Response:
        return self._render(
            "approvals.html",
            login=login,
            page="approvals",
            pending=await self._pending_view(),
            now=self._clock(),
            done=request.query_params.get("done"),
            problem=request.query_params.get("problem"),
            poll_ms=POLL_MS,
        )

    async def _approvals_list(self, request: Request, login: Login) -> Response:
        pending = await self._pending_view()
        return self._render("_pending.html", login=login, pending=pending, now=self._clock())

    async def _answer(self, request: Request, login: Login) -> Response:
        approval_id = request.path_params["approval_id"]
        verb = request.path_params["verb"]
        if verb not in ("approve", "deny"):
            return self._render("error.html", 404, message=f"No action {verb!r}.")
        form = await request.form()
        note = str(form.get("reason") or "").strip()[:500]
        try:
            record = await self._api.resolve_approval(
                approval_id, verb == "approve", by=login.operator, note=note
            )
        except UnknownApproval as exc:
            problem = f"{exc} (answered by someone else, expired, or never asked here)"
            return RedirectResponse(
                f"{PREFIX}/approvals?{urlencode({'problem': problem})}", 303, _SECURITY_HEADERS
            )
        except (StateUnavailable, AuditUnavailable) as exc:
            return self._render("error.html", 503, message=f"The answer was not recorded: {exc}")
        done = (
            f"{'Approved' if verb == 'approve' else 'Denied'} {record.approval_id}: "
            f"{record.tool} for grant {record.grant} (as operator:{login.operator})"
        )
        return RedirectResponse(
            f"{PREFIX}/approvals?{urlencode({'done': done})}", 303, _SECURITY_HEADERS
        )

    # -- audit ----------------------------------------------------------------------------

    def _query(self, request: Request) -> tuple[AuditQuery, dict[str, str], str | None]:
        params = {k: request.query_params.get(k, "").strip() for k in (*_FILTERS, "since", "until")}
        problem = None
        times: dict[str, datetime | None] = {"since": None, "until": None}
        for name in times:
            if params[name]:
                try:
                    times[name] = parse_time(params[name])
                except ValueError:
                    problem = (
                        f"{name}: expected an ISO-8601 time such as 2025-01-31T12:00, "
                        f"got {params[name]!r}"
                    )
        query = AuditQuery(
            **{k: params[k] or None for k in _FILTERS},
            since=times["since"],
            until=times["until"],
        )
        return query, params, problem

    async def _audit(self, request: Request, login: Login) -> Response:
        query, params, problem = self._query(request)
        records: list[AuditRecord] = []
        if problem is None:
            try:
                records = await self._api.audit(query, last=AUDIT_PAGE_RECORDS)
            except AuditUnavailable as exc:
                problem = f"The audit trail cannot be read: {exc}"
        records.reverse()
        return self._render(
            "audit.html",
            login=login,
            page="audit",
            records=records,
            params=params,
            problem=problem,
            decisions=_DECISIONS,
            events=_EVENTS,
            limit=AUDIT_PAGE_RECORDS,
            export=urlencode({k: v for k, v in params.items() if v}),
        )

    async def _export(self, request: Request, login: Login) -> Response:
        query, _params, problem = self._query(request)
        if problem:
            return Response(problem, 400, media_type="text/plain", headers=_SECURITY_HEADERS)
        lines = await self._api.audit_lines(query)
        headers = {
            **_SECURITY_HEADERS,
            "content-disposition": 'attachment; filename="sandgate-audit.jsonl"',
        }
        return Response(b"".join(lines), media_type="application/x-ndjson", headers=headers)

    async def _audit_record(self, request: Request, login: Login) -> Response:
        record_id = request.path_params["record_id"]
        records = await self._api.audit(AuditQuery(id=record_id), last=50)
        status = 200 if records else 404
        return self._render(
            "audit_record.html",
            status,
            login=login,
            page="audit",
            record_id=record_id,
            records=[(r, _highlight.data(r.to_dict())) for r in records],
        )

    # -- usage ----------------------------------------------------------------------------

    def _charts(self) -> dict[str, list[Any]]:
        by_grant, by_engine = self._api.usage()
        charts: dict[str, list[Any]] = {}
        for label, series in (("grant", by_grant), ("engine", by_engine)):
            start = series[0].start if series else self._clock() - 3600
            made = []
            for title, field, unit in (
                ("Calls per minute", "calls", ""),
                ("Denials per minute", "denials", ""),
                ("Busy answers per minute", "busy", ""),
                ("Mean latency", "latency_mean_s", "s"),
            ):
                lines = [(s.name, [float(getattr(b, field)) for b in s.buckets]) for s in series]
                name = f"{title} by {label}"
                chart = line_chart(name, unit=unit, start=start, step_s=60, lines=lines)
                made.append((name, chart))
            charts[label] = made
        return charts

    async def _usage(self, request: Request, login: Login) -> Response:
        by_grant, by_engine = self._api.usage()
        sessions = self._api.sessions()
        per_grant: dict[str, list[Any]] = {}
        for session in sessions:
            per_grant.setdefault(session.grant, []).append(session)
        return self._render(
            "usage.html",
            login=login,
            page="usage",
            charts=self._charts(),
            totals=[("grant", by_grant), ("engine", by_engine)],
            pools=self._api.pools(),
            sessions=per_grant,
            done=request.query_params.get("done"),
        )

    async def _end_session(self, request: Request, login: Login) -> Response:
        form = await request.form()
        grant, session_id = str(form.get("grant") or ""), str(form.get("session") or "")
        ended = await self._api.end_session(grant, session_id)
        done = (
            f"Ended session {session_id} of grant {grant}."
            if ended
            else f"Grant {grant} holds no session {session_id} (it ended already)."
        )
        return RedirectResponse(
            f"{PREFIX}/usage?{urlencode({'done': done})}", 303, _SECURITY_HEADERS
        )

    # -- policy ---------------------------------------------------------------------------

    async def _policy(self, request: Request, login: Login) -> Response:
        info = self._api.policy()
        explained = None
        problem = None
        form_values = {"tool": "", "grant": "", "args": "{}"}
        if request.method == "POST":
            form = await request.form()
            form_values = {k: str(form.get(k) or "").strip() for k in form_values}
            try:
                args = json.loads(form_values["args"] or "{}")
            except json.JSONDecodeError as exc:
                args, problem = None, f"arguments: expected a JSON object, got invalid JSON ({exc})"
            if args is not None and not isinstance(args, dict):
                problem = f"arguments: expected a JSON object, got {type(args).__name__}"
            if not form_values["tool"]:
                problem = "tool: expected a tool name, got nothing"
            if problem is None and isinstance(args, dict):
                explained = await self._api.explain(
                    tool=form_values["tool"], args=args, grant=form_values["grant"] or "local"
                )
        dumped = _redacted(info.policy.model_dump(mode="json", exclude_defaults=True))
        return self._render(
            "policy.html",
            login=login,
            page="policy",
            info=info,
            text=_highlight.yaml_text(yaml.safe_dump(dumped, sort_keys=False, allow_unicode=True)),
            tools=self._api.tools(),
            grants=sorted(info.policy.grants) or ["anonymous", "local"],
            form=form_values,
            explained=explained,
            explained_limits=_highlight.data(dict(explained.limits))
            if explained and explained.limits
            else None,
            problem=problem,
        )

    # -- JSON -----------------------------------------------------------------------------

    async def _api_approvals(self, request: Request, login: Login) -> Response:
        items = await self._api.pending_approvals()
        return JSONResponse(
            [
                {
                    "approval_id": i.approval_id,
                    "tool": i.call.tool,
                    "grant": i.call.grant,
                    "session": i.call.session,
                    "arguments": dict(i.call.args),
                    "rule": i.rule,
                    "asked_at": i.asked_at,
                    "expires_at": i.expires_at,
                    "held": i.held,
                }
                for i in items
            ],
            headers=_SECURITY_HEADERS,
        )

    async def _api_answer(self, request: Request, login: Login) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("approve"), bool):
            detail = 'expected a JSON body {"approve": true|false, "reason": "..."}'
            return JSONResponse({"error": "bad_request", "detail": detail}, 400)
        reason = body.get("reason")
        try:
            record = await self._api.resolve_approval(
                request.path_params["approval_id"],
                body["approve"],
                by=login.operator,
                note=reason if isinstance(reason, str) else None,
            )
        except UnknownApproval as exc:
            return JSONResponse({"error": "not_found", "detail": str(exc)}, 404)
        except (StateUnavailable, AuditUnavailable) as exc:
            return JSONResponse({"error": "unavailable", "detail": str(exc)}, 503)
        return JSONResponse(
            {"approval_id": record.approval_id, "status": record.status, "by": record.resolved_by}
        )

    async def _api_audit(self, request: Request, login: Login) -> Response:
        query, _params, problem = self._query(request)
        if problem:
            return JSONResponse({"error": "bad_request", "detail": problem}, 400)
        records = await self._api.audit(query, last=AUDIT_PAGE_RECORDS)
        return JSONResponse([r.to_dict() for r in records], headers=_SECURITY_HEADERS)

    async def _api_usage(self, request: Request, login: Login) -> Response:
        by_grant, by_engine = self._api.usage()
        pools = self._api.pools()

        def totals(series: list[Any]) -> dict[str, dict[str, float]]:
            fields = ("calls", "denials", "approvals", "busy", "latency_sum_s")
            return {s.name: {f: s.total(f) for f in fields} for s in series}

        return JSONResponse(
            {
                "by_grant": totals(by_grant),
                "by_engine": totals(by_engine),
                "pools": {
                    "slots": pools.slots,
                    "free": pools.free,
                    "waiting": pools.waiting,
                    "engines": {k: dict(v) for k, v in pools.engines.items()},
                },
                "sessions": [
                    {"grant": s.grant, "session": s.id, "last_used": s.last_used, "busy": s.busy}
                    for s in self._api.sessions()
                ],
            },
            headers=_SECURITY_HEADERS,
        )

    async def _api_policy(self, request: Request, login: Login) -> Response:
        info = self._api.policy()
        return JSONResponse(
            {
                "version": info.version,
                "loaded_at": info.loaded_at,
                "source": str(info.source) if info.source else None,
                "policy": _redacted(info.policy.model_dump(mode="json")),
            },
            headers=_SECURITY_HEADERS,
        )


def _safe_next(target: str | None) -> str:
    """Where to go after logging in: a console path, never another site."""
    if target and target.startswith(PREFIX + "/") and not target.startswith("//"):
        return target
    return f"{PREFIX}/approvals"


def _redacted(value: Any) -> Any:
    """The policy with token hashes cut to their first 8 digits."""
    if isinstance(value, dict):
        return {
            k: (f"{v[:8]}…" if k == "token_sha256" and isinstance(v, str) else _redacted(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def _when(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unix))


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
