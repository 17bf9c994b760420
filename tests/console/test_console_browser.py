"""The operator console end to end: a real `sandgate serve --transport streamable-http`, real
MCP clients over HTTP, and a real headless Chromium (Debian's `chromium` + `chromium-driver`,
driven by Selenium) as the operator.

One server and one browser serve the whole module. Each page's screenshot is saved under the
module's temp folder (its path is printed).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx2 as httpx
import mcp_types as types
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.processes import sandgate_command
from tests.results import text_of
from tests.tenancy._server import TenantServer, tenant_policy, tenant_server

pytestmark = [pytest.mark.wasm, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
OPERATOR = "ops-alice"
OPERATOR_TOKEN = "operator-token-of-ops-alice-7f3a"
WAIT_S = 30.0
"""Longest a test waits for the page (or a held client) to show something."""
CALL_DONE_S = 90.0
"""Longest a test waits for a client's call to finish once answered."""
TOOLS = (
    "  run_code: {action: require_approval, reason: every run is reviewed}\n  run_python_code: {}\n"
)


def _console_section() -> str:
    digest = hashlib.sha256(OPERATOR_TOKEN.encode()).hexdigest()
    return (
        "server:\n  console:\n    hold_approvals_s: 120\n    operators:\n"
        f"      - {{name: {OPERATOR}, token_sha256: '{digest}'}}\n"
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TenantServer]:
    policy = tenant_policy("wasm", tools=TOOLS, sections=_console_section())
    with tenant_server(
        tmp_path_factory.mktemp("console"), "wasm", policy=policy, workers=1
    ) as running:
        yield running


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("console-screenshots")
    print(f"\nconsole screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """One headless Chromium for the module, the system's own: Selenium Manager never runs
    (the driver and browser are given, and SE_OFFLINE forbids downloads)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if os.environ.get("CI") == "true":
            pytest.fail("chromium and chromium-driver are not installed (scripts/test.sh does)")
        pytest.skip("chromium and chromium-driver are not installed (apt-get install them)")
    os.environ["SE_OFFLINE"] = "true"
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root in CI: Chromium's own sandbox needs a user namespace
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def operator(browser: WebDriver, server: TenantServer) -> WebDriver:
    """The browser, logged in as the operator."""
    browser.get(f"{server.base}/console/")
    _log_in(browser, OPERATOR_TOKEN)
    _wait(browser, lambda d: d.find_element(By.ID, "operator").text == OPERATOR)
    return browser


def _log_in(browser: WebDriver, token: str) -> None:
    field = _wait_for(browser, By.ID, "token")
    field.clear()
    field.send_keys(token)
    browser.find_element(By.ID, "login").click()


def _wait(browser: WebDriver, condition: Callable[[Any], Any], timeout_s: float = WAIT_S) -> Any:
    return WebDriverWait(browser, timeout_s, poll_frequency=0.1).until(condition)


def _wait_for(browser: WebDriver, by: str, what: str) -> WebElement:
    found: WebElement = _wait(browser, lambda d: d.find_element(by, what))
    return found


def _shot(browser: WebDriver, shots: Path, name: str) -> Path:
    path = shots / f"{name}.png"
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, max(1000, min(int(height) + 40, 4000)))
    assert browser.save_screenshot(str(path)), path
    browser.set_window_size(1280, 1000)
    print(f"screenshot: {path}")
    return path


def _in_background(work: Coroutine[Any, Any, Any]) -> Future[Any]:
    """Run an MCP client's coroutine on its own event loop in a thread (the test drives the
    browser meanwhile); its result or exception lands in the future."""
    done: Future[Any] = Future()

    def run() -> None:
        try:
            done.set_result(asyncio.run(work))
        except BaseException as exc:
            done.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return done


async def _call(server: TenantServer, grant: str, tool: str, code: str) -> types.CallToolResult:
    async with server.client(grant) as client:
        result = await client.call_tool(tool, {"code": code})
        assert isinstance(result, types.CallToolResult)
        return result


async def _call_and_stay(
    server: TenantServer, grant: str, ran: threading.Event, leave: threading.Event
) -> types.CallToolResult:
    """Run one call, say so, and keep the client's session open until told to leave."""
    async with server.client(grant) as client:
        result = await client.call_tool("run_python_code", {"code": "print(6 * 7)"})
        ran.set()
        await asyncio.to_thread(leave.wait, CALL_DONE_S)
        assert isinstance(result, types.CallToolResult)
        return result


def _pending_card(browser: WebDriver, grant: str) -> WebElement:
    """The pending approval of `grant` once the page shows it (the page updates by itself)."""

    def shown(driver: WebDriver) -> WebElement | bool:
        for card in driver.find_elements(By.CSS_SELECTOR, "[data-approval]"):
            if card.find_element(By.CSS_SELECTOR, ".grant").text == grant:
                return card
        return False

    card: WebElement = _wait(browser, shown)
    return card


# -- who may open it -------------------------------------------------------------------------


def test_without_the_operator_credential_the_console_is_refused(server: TenantServer) -> None:
    with httpx.Client(base_url=server.base, follow_redirects=False, timeout=WAIT_S) as http:
        page = http.get("/console/approvals")
        assert page.status_code == 303
        assert page.headers["location"].startswith("/console/login")
        assert http.get("/console/api/approvals").status_code == 401
        forged = http.post("/console/approvals/0123456789ab/approve", data={"csrf": "x"})
        assert forged.status_code == 401
        wrong = http.post("/console/login", data={"token": "not-an-operator"})
        assert wrong.status_code == 401
        assert "sandgate_console" not in wrong.cookies


def test_a_clients_token_never_opens_the_console(
    browser: WebDriver, server: TenantServer, shots: Path
) -> None:
    client_token = server.tokens["alice"]
    with httpx.Client(base_url=server.base, timeout=WAIT_S) as http:
        api = http.get("/console/api/usage", headers={"Authorization": f"Bearer {client_token}"})
        assert api.status_code == 401
        assert http.get("/console/api/usage", headers=server.headers("alice")).status_code == 401
        mcp_side = http.get("/console/api/usage", headers={"Authorization": "Bearer x"})
        assert mcp_side.status_code == 401
    browser.get(f"{server.base}/console/login")
    _log_in(browser, client_token)
    error = _wait_for(browser, By.ID, "login-error")
    assert "client's token" in error.text
    _shot(browser, shots, "login-refused")
    assert browser.get_cookie("sandgate_console") is None


def test_a_form_without_its_csrf_token_is_refused(
    operator: WebDriver, server: TenantServer
) -> None:
    cookie = operator.get_cookie("sandgate_console")
    assert cookie is not None and cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    with httpx.Client(base_url=server.base, timeout=WAIT_S) as http:
        http.cookies.set("sandgate_console", cookie["value"])
        assert http.get("/console/approvals").status_code == 200
        refused = http.post("/console/approvals/0123456789ab/approve", data={"reason": "x"})
        assert refused.status_code == 403
        assert "CSRF" in refused.text


# -- approvals -------------------------------------------------------------------------------


def test_the_operator_approves_a_waiting_call_and_the_client_gets_its_result(
    operator: WebDriver, server: TenantServer, shots: Path
) -> None:
    operator.get(f"{server.base}/console/approvals")
    _wait_for(operator, By.ID, "no-pending")
    code = "total = sum(range(10))\nprint('approved run', total)"
    waiting = _in_background(_call(server, "alice", "run_code", code))

    card = _pending_card(operator, "alice")  # appears without a reload while alice waits
    assert not waiting.done()
    assert "client waiting" in card.text
    assert card.find_element(By.CSS_SELECTOR, ".hl .k, .hl .nb, .hl .n")  # highlighted code
    assert "approved run" in card.find_element(By.CSS_SELECTOR, ".code").text
    assert "/tools/run_code/action" in card.text
    _shot(operator, shots, "approvals")
    approval_id = card.get_attribute("data-approval")

    card.find_element(By.CSS_SELECTOR, "input.reason").send_keys("looks harmless")
    card.find_element(By.CSS_SELECTOR, "button.approve").click()
    flash = _wait_for(operator, By.ID, "flash")
    assert f"Approved {approval_id}" in flash.text

    result = waiting.result(timeout=CALL_DONE_S)
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    assert result.structured_content["stdout"] == "approved run 45\n"
    answers = [
        r for r in server.audit() if r["event"] == "approval" and r["approval_id"] == approval_id
    ]
    assert [(r["decision"], r["by"]) for r in answers] == [("allow", f"operator:{OPERATOR}")]
    assert answers[0]["reason"].endswith("looks harmless")


def test_the_operator_denies_a_call_and_the_client_sees_why(
    operator: WebDriver, server: TenantServer
) -> None:
    operator.get(f"{server.base}/console/approvals")
    waiting = _in_background(_call(server, "bob", "run_code", "import socket\nprint('scan')"))
    card = _pending_card(operator, "bob")
    card.find_element(By.CSS_SELECTOR, "input.reason").send_keys("no sockets in this tenant")
    card.find_element(By.CSS_SELECTOR, "button.deny").click()
    assert "Denied" in _wait_for(operator, By.ID, "flash").text

    result = waiting.result(timeout=CALL_DONE_S)
    assert result.is_error
    said = text_of(result)
    assert f"denied this call by operator:{OPERATOR}" in said
    assert "no sockets in this tenant" in said
    _wait(operator, lambda d: d.find_elements(By.ID, "no-pending"))


def test_a_held_call_also_completes_when_approved_from_the_shell(server: TenantServer) -> None:
    code = "print('approved from the shell')"
    waiting = _in_background(_call(server, "carol", "run_code", code))
    bearer = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}

    def carols() -> list[dict[str, Any]]:
        listed = httpx.get(f"{server.base}/console/api/approvals", headers=bearer, timeout=WAIT_S)
        assert listed.status_code == 200, listed.text
        return [a for a in listed.json() if a["grant"] == "carol"]

    deadline = time.monotonic() + WAIT_S
    while not (pending := carols()) or not pending[0]["held"]:
        assert time.monotonic() < deadline, "carol's call was never held"
        time.sleep(0.1)
    assert pending[0]["arguments"] == {"code": code}
    argv = [
        sandgate_command(),
        "approve",
        pending[0]["approval_id"],
        "--state-dir",
        str(server.state_dir),
        "--by",
        "ops-shell",
        "--reason",
        "checked by hand",
    ]
    subprocess.run(argv, check=True, capture_output=True, timeout=WAIT_S)

    result = waiting.result(timeout=CALL_DONE_S)  # the held call polls the store for it
    assert not result.is_error, text_of(result)
    [answer] = [
        r
        for r in server.audit()
        if r.get("approval_id") == pending[0]["approval_id"] and r["event"] == "approval"
    ]
    assert (answer["by"], answer["reason"]) == (
        "operator:ops-shell",
        "approved by operator:ops-shell: checked by hand",
    )


# -- audit -----------------------------------------------------------------------------------


def test_the_audit_page_filters_opens_a_record_and_exports(
    operator: WebDriver, server: TenantServer, shots: Path
) -> None:
    operator.get(f"{server.base}/console/audit")
    form = _wait_for(operator, By.ID, "audit-filter")
    form.find_element(By.NAME, "grant").send_keys("bob")
    form.find_element(By.NAME, "tool").send_keys("run_code")
    form.find_element(By.CSS_SELECTOR, "select[name=decision] option[value=deny]").click()
    form.find_element(By.ID, "filter").click()
    _wait(operator, lambda d: "grant=bob" in d.current_url)
    rows = operator.find_elements(By.CSS_SELECTOR, "tr.record")
    assert rows, "the filter kept no record"
    kept = {(r.get_attribute("data-grant"), r.get_attribute("data-tool")) for r in rows}
    assert kept == {("bob", "run_code")}
    assert {r.get_attribute("data-decision") for r in rows} == {"deny"}
    _shot(operator, shots, "audit")

    export = operator.find_element(By.ID, "export").get_attribute("href")
    cookie = operator.get_cookie("sandgate_console")
    assert export is not None and cookie is not None
    with httpx.Client(timeout=WAIT_S) as http:
        http.cookies.set("sandgate_console", cookie["value"])
        lines = http.get(export).text.splitlines()
    records = [json.loads(line) for line in lines]
    assert records and {(r["grant"], r["decision"]) for r in records} == {("bob", "deny")}

    rows[0].find_element(By.CSS_SELECTOR, "a").click()
    detail = _wait_for(operator, By.CSS_SELECTOR, ".record-detail")
    assert "Code sha256" in detail.text
    code_hash = hashlib.sha256(b"import socket\nprint('scan')").hexdigest()
    assert code_hash in operator.find_element(By.TAG_NAME, "main").text
    _shot(operator, shots, "audit-record")


# -- usage -----------------------------------------------------------------------------------


def test_the_usage_page_charts_the_last_hour_and_ends_a_session(
    operator: WebDriver, server: TenantServer, shots: Path
) -> None:
    leave = threading.Event()
    staying = []
    for grant in ("alice", "carol"):
        ran = threading.Event()
        staying.append(_in_background(_call_and_stay(server, grant, ran, leave)))
        assert ran.wait(CALL_DONE_S), f"{grant}'s call did not finish"
    operator.get(f"{server.base}/console/usage")
    chart = _wait_for(
        operator, By.CSS_SELECTOR, "svg.chart[data-title='Calls per minute by grant']"
    )
    drawn = {
        line.get_attribute("data-name") for line in chart.find_elements(By.TAG_NAME, "polyline")
    }
    assert {"alice", "bob", "carol"} <= drawn
    engines = operator.find_element(
        By.CSS_SELECTOR, "svg.chart[data-title='Mean latency by engine']"
    )
    assert "wasm" in {
        line.get_attribute("data-name") for line in engines.find_elements(By.TAG_NAME, "polyline")
    }
    assert "wasm" in operator.find_element(By.ID, "pools").text
    _shot(operator, shots, "usage")

    rows = operator.find_elements(By.CSS_SELECTOR, "#sessions tr.session-row")
    assert rows, "no session listed"
    ended = rows[0].get_attribute("data-session")
    rows[0].find_element(By.CSS_SELECTOR, "button.end-session").click()
    assert f"Ended session {ended}" in _wait_for(operator, By.ID, "flash").text
    listed = {
        r.get_attribute("data-session")
        for r in operator.find_elements(By.CSS_SELECTOR, "#sessions tr.session-row")
    }
    assert ended not in listed
    leave.set()
    for done in staying:
        assert "42" in text_of(done.result(timeout=CALL_DONE_S))


# -- policy ----------------------------------------------------------------------------------


def test_the_policy_page_shows_the_policy_and_explains_a_call(
    operator: WebDriver, server: TenantServer, shots: Path
) -> None:
    operator.get(f"{server.base}/console/policy")
    version = _wait_for(operator, By.ID, "policy-version").text
    assert re.fullmatch(r"[0-9a-f]{12}", version)
    assert "UTC" in operator.find_element(By.ID, "loaded-at").text
    text = operator.find_element(By.ID, "policy-text").text
    assert "require_approval" in text and OPERATOR in text
    assert hashlib.sha256(OPERATOR_TOKEN.encode()).hexdigest() not in text

    operator.find_element(By.CSS_SELECTOR, "#explain-tool option[value=run_code]").click()
    args = operator.find_element(By.ID, "explain-args")
    args.clear()
    args.send_keys('{"code": "print(1)"}')
    operator.find_element(By.ID, "explain-go").click()
    decision = _wait_for(operator, By.ID, "explained-decision")
    assert decision.text == "needs_approval"
    assert "/tools/run_code/action" in operator.find_element(By.ID, "explained").text
    _shot(operator, shots, "policy")


# -- Grafana ---------------------------------------------------------------------------------

DASHBOARD = Path(__file__).parents[2] / "runner" / "console" / "grafana-dashboard.json"


def _exported_names(text: str) -> set[str]:
    """Every series name `/metrics` exports: the samples, and the names a family's type gives
    it (a histogram's `_bucket`, `_sum`, `_count`; a counter's `_total`) even before a sample."""
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1].isalpha()}
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count")}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            names.add(family)
            names.update(family + s for s in suffixes.get(kind.strip(), ()))
    return names


def test_the_grafana_dashboard_queries_only_metrics_sandgate_exports(
    server: TenantServer,
) -> None:
    exported = _exported_names(
        httpx.get(f"{server.base}/metrics", headers=server.headers("alice"), timeout=WAIT_S).text
    )
    assert "sandgate_calls_total" in exported
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert len(exprs) >= 6
    used = {name for expr in exprs for name in re.findall(r"\bsandgate_[a-z_]+\b", expr)}
    assert used, exprs
    assert used <= exported, f"not exported by sandgate: {sorted(used - exported)}"
