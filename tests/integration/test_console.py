"""The console at `/console/`: its session (login with a token, HttpOnly SameSite=Strict
cookie, CSRF on every change, logout) over plain HTTP, then the pages in a real browser:
Debian's headless Chromium driven by Selenium, against a running system. Every page's
screenshot goes to the test's tmp dir; a JavaScript error in the browser's log fails."""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sentry_relay

from actors.ai import AIConfig
from actors.worker import ACTOR_NAMES, Worker
from bus.embedded import ServerProcess
from tests.ai_helpers import error_event, start_ai_worker
from tests.conftest import gateway_redis_url
from tests.openai_stub import OpenAIStub
from tests.system import SystemUnderTest, http_request
from tests.waiting import eventually

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
REPLY = "The key `rate` is missing.\nUse `rates.get('rate', 0)`:\n\n    total = rates.get('rate', 0)\n"


@pytest.fixture(scope="module")
def system(nats_server: ServerProcess, redis_server: ServerProcess) -> Iterator[SystemUnderTest]:
    """The whole system, its AI actor pointed at an OpenAI-compatible stub over real HTTP."""
    with OpenAIStub(reply_text=REPLY, chunk_delay=0.05) as stub:
        sut = SystemUnderTest(nats_server.url, redis_server.url, actors=[a for a in ACTOR_NAMES if a != "ai"],
                              gateway_redis_url=gateway_redis_url(redis_server)).start()
        ai: Worker = start_ai_worker(nats_server.url, redis_server.url,
                                     AIConfig(base_url=stub.url, api_key="k", model="stub-model", timeout=5.0))
        try:
            yield sut
        finally:
            try:
                sut.stop()
            finally:
                ai.stop()


@pytest.fixture(scope="module")
def people(system: SystemUnderTest) -> Iterator[dict[str, str]]:
    """An admin (relayctl.admin: may create orgs and list relays) and a registered relay."""
    tag = uuid.uuid4().hex[:6]
    admin = f"ops-{tag}"
    system.cli_ok("user", "create", admin)
    system.cli_ok("permissions", "add", "-u", admin, "-p", "relayctl.admin")
    relay = system.registered_relay()
    yield {"admin": admin, "tag": tag, "relay": relay.public_key_str,
           "token": system.cli_ok("token", "create", admin, "--json")["token"]}


def call(system: SystemUnderTest, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    raw = json.dumps(body).encode() if body is not None else None
    sent = {**({"Content-Type": "application/json"} if raw else {}), **(headers or {})}
    status, hdrs, data = http_request(system.url + path, method, raw, sent)
    return status, hdrs, json.loads(data) if data else None


def raise_in_checkout(n: int) -> None:
    """The frame the event page must show (a name of this module's own)."""
    raise ValueError(f"checkout failed {n}")


def sdk_client(system: SystemUnderTest, token: str, org: str, project: str, **options: Any) -> Any:
    """A real sentry-sdk client on the project's first active key, to the gateway."""
    import sentry_sdk

    assert system.gateway is not None
    detail = call(system, "GET", f"/api/0/projects/{org}/{project}/", headers={"Authorization": f"Bearer {token}"})[2]
    keys = call(system, "GET", f"/api/0/projects/{org}/{project}/keys/", headers={"Authorization": f"Bearer {token}"})[2]
    public = next(k["public"] for k in keys if k["isActive"])
    return sentry_sdk.Client(dsn=f"http://{public}@127.0.0.1:{system.gateway.port}/{detail['id']}",
                             default_integrations=False, auto_enabling_integrations=False, **options)


def capture(system: SystemUnderTest, token: str, org: str, project: str, n: int) -> list[str]:
    """`n` exceptions from a real sentry-sdk client, to the gateway's envelope endpoint."""
    import sentry_sdk

    client = sdk_client(system, token, org, project)
    ids = []
    with sentry_sdk.new_scope() as scope:
        scope.set_client(client)
        for i in range(n):
            try:
                raise_in_checkout(i)
            except ValueError as exc:
                ids.append(str(sentry_sdk.capture_exception(exc)))
    client.flush(timeout=10)
    client.close()
    return ids


def capture_message(system: SystemUnderTest, token: str, org: str, project: str) -> str:
    """An error-level message with the stack it was sent from (`attach_stacktrace`: in `threads`)."""
    import sentry_sdk

    client = sdk_client(system, token, org, project, attach_stacktrace=True)
    with sentry_sdk.new_scope() as scope:
        scope.set_client(client)
        event_id = str(sentry_sdk.capture_message("checkout is slow", level="error"))
    client.flush(timeout=10)
    client.close()
    return event_id


def login(system: SystemUnderTest, token: str) -> tuple[str, str]:
    """The session cookie (`name=value`) and CSRF token of a good login."""
    status, headers, body = call(system, "POST", "/console/session", headers={"Authorization": f"Bearer {token}"})
    assert status == 200, body
    cookie = headers["set-cookie"]
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")}
    assert {"httponly", "samesite", "path"} <= attributes and "SameSite=Strict" in cookie, cookie
    assert token not in cookie and token not in json.dumps(body)
    return cookie.split(";")[0], body["csrf"]


def test_the_session_checks_the_token_and_every_change_needs_the_csrf_token(system: SystemUnderTest,
                                                                           people: dict[str, str]) -> None:
    bad = call(system, "POST", "/console/session", headers={"Authorization": "Bearer nope"})
    assert bad[0] == 401 and bad[2] == {"token": ["Invalid token"]} and "set-cookie" not in bad[1]
    assert call(system, "POST", "/console/session")[0] == 400
    assert call(system, "GET", "/console/session")[2] == {"username": None, "csrf": None}
    cookie, csrf = login(system, people["token"])
    assert call(system, "GET", "/console/session", headers={"Cookie": cookie})[2] == \
        {"username": people["admin"], "csrf": csrf}
    # the session's reads are the token's
    status, _, index = call(system, "GET", "/api/0/", headers={"Cookie": cookie})
    assert status == 200 and index["user"]["username"] == people["admin"]
    org = f"csrf-{people['tag']}"
    # a change without the CSRF token, or a wrong one, is refused and stores nothing
    for headers in ({"Cookie": cookie}, {"Cookie": cookie, "X-CSRF-Token": csrf + "x"}):
        status, _, body = call(system, "POST", "/api/0/organizations/", {"name": org}, headers)
        assert status == 403 and "CSRF" in body["detail"], body
    assert call(system, "GET", f"/api/0/organizations/{org}/", headers={"Cookie": cookie})[0] == 404
    status, _, created = call(system, "POST", "/api/0/organizations/", {"name": org},
                              {"Cookie": cookie, "X-CSRF-Token": csrf})
    assert status == 201 and created["slug"] == org
    # logout needs the CSRF token too, then the cookie is worth nothing
    assert call(system, "DELETE", "/console/session", headers={"Cookie": cookie})[0] == 403
    assert call(system, "DELETE", "/console/session", headers={"Cookie": cookie, "X-CSRF-Token": csrf})[0] == 204
    assert call(system, "GET", "/api/0/organizations/", headers={"Cookie": cookie})[0] == 401
    assert call(system, "GET", "/console/session", headers={"Cookie": cookie})[2]["csrf"] is None


def test_a_session_is_only_as_good_as_its_token(system: SystemUnderTest, people: dict[str, str]) -> None:
    """Each request is checked again by the API: a revoked token's session is refused at once,
    and a session has no more rights than its token (a user who is a member nowhere)."""
    nobody = f"nobody-{people['tag']}"
    system.cli_ok("user", "create", nobody)
    token = system.cli_ok("token", "create", nobody, "--name", "console", "--json")["token"]
    cookie, csrf = login(system, token)
    assert call(system, "GET", "/api/0/organizations/", headers={"Cookie": cookie})[2] == []
    status, _, body = call(system, "POST", "/api/0/organizations/", {"name": f"no-{people['tag']}"},
                           {"Cookie": cookie, "X-CSRF-Token": csrf})
    assert status == 403, body
    # a request's own Authorization wins over the cookie
    status, _, index = call(system, "GET", "/api/0/", headers={"Cookie": cookie,
                                                                "Authorization": f"Bearer {people['token']}"})
    assert index["user"]["username"] == people["admin"]
    listed = system.cli_ok("token", "list", nobody, "--json")["tokens"]
    system.cli_ok("token", "revoke", next(t["id"] for t in listed if t["name"] == "console"))
    assert call(system, "GET", "/api/0/organizations/", headers={"Cookie": cookie})[0] == 401


def test_sessions_expire_and_a_full_store_drops_the_oldest(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.console import session as console

    now = [1000.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(console, "MAX_SESSIONS", 3)
    store = console.SessionStore(seconds=10)
    first, _ = store.create("t1", "u1")
    assert store.get(first) is not None and store.get("nope") is None and store.get(None) is None
    now[0] += 10
    assert store.get(first) is None  # expired, and gone
    ids = [store.create(f"t{i}", "u")[0] for i in range(4)]
    assert store.get(ids[0]) is None and all(store.get(i) is not None for i in ids[1:])
    store.drop(ids[1])
    assert store.get(ids[1]) is None


def test_the_pages_are_served_with_a_strict_content_security_policy(system: SystemUnderTest) -> None:
    status, headers, _ = http_request(system.url + "/console/")
    assert status == 200 and "script-src 'self'" in headers["content-security-policy"]
    assert http_request(system.url + "/console/app.js")[1]["content-type"].startswith("text/javascript")
    assert http_request(system.url + "/console/nothing.js")[0] == 404


# -- in the browser ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


class Page:
    """The browser on the console: waits, screenshots, and the JavaScript errors it logged."""

    def __init__(self, driver: Any, base: str, shots: Path) -> None:
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.base, self.shots = driver, base, shots
        # pages re-render after each change: an element found a moment ago may be gone
        self.wait = WebDriverWait(driver, 15, ignored_exceptions=[StaleElementReferenceException])
        self.errors: list[dict[str, Any]] = []

    def css(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        return self.wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, selector)))

    def text(self, selector: str, contains: str) -> Any:
        from selenium.webdriver.common.by import By

        def found(driver: Any) -> Any:
            for el in driver.find_elements(By.CSS_SELECTOR, selector):
                if contains in el.text:
                    return el
            return False
        return self.wait.until(found)

    def button(self, label: str, within: Any | None = None) -> Any:
        from selenium.webdriver.common.by import By

        def found(driver: Any) -> Any:
            for el in (within or driver).find_elements(By.TAG_NAME, "button"):
                if el.text.strip() == label and el.is_displayed() and el.is_enabled():
                    return el
            return False
        return self.wait.until(found)

    def fill(self, label: str, value: str, within: Any | None = None) -> Any:
        from selenium.webdriver.common.by import By

        def found(driver: Any) -> Any:
            for element in (within or driver).find_elements(By.TAG_NAME, "label"):
                if element.text.strip() == label and element.is_displayed():
                    return driver.find_element(By.ID, element.get_attribute("for"))
            return False
        control = self.wait.until(found, f"no field labelled {label!r}")
        control.clear()
        control.send_keys(value)
        return control

    def shot(self, name: str) -> None:
        self.driver.save_screenshot(str(self.shots / f"{name}.png"))
        width = self.driver.execute_script("return document.documentElement.scrollWidth - "
                                           "document.documentElement.clientWidth")
        assert width <= 1, f"{name}: the page is {width}px wider than the window"
        # keyboard and screen readers: every control has a label, every action is a real button
        unlabelled = self.driver.execute_script(
            "return [...document.querySelectorAll('input, select, textarea')]"
            ".filter((e) => !e.labels || !e.labels.length).map((e) => e.outerHTML)")
        assert not unlabelled, f"{name}: controls without a label: {unlabelled}"
        clickable = self.driver.execute_script(
            "return [...document.querySelectorAll('[onclick], div[tabindex], span[tabindex]')].length")
        assert clickable == 0, f"{name}: clickable elements that are not buttons or links"
        self.collect()

    def collect(self) -> None:
        for entry in self.driver.get_log("browser"):
            # A 4xx the page expects (a refused option value) is logged as a network error;
            # what fails is JavaScript: an exception or console.error.
            if entry["level"] == "SEVERE" and entry.get("source") != "network":
                self.errors.append(entry)


def test_the_console_in_chromium(system: SystemUnderTest, people: dict[str, str], browser: Any,
                                 tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    page = Page(browser, system.url, tmp_path)
    try:
        walk_through(system, people, browser, page)
    except Exception:
        browser.save_screenshot(str(tmp_path / "failure.png"))
        print("browser log:", browser.get_log("browser"))
        print("rendered:", browser.find_element(By.ID, "main").get_attribute("data-rendered"))
        print("status:", browser.find_element(By.ID, "status").get_attribute("textContent"))
        print("page:", browser.find_element(By.TAG_NAME, "main").get_attribute("outerHTML")[:3000])
        raise
    assert not page.errors, page.errors


def walk_through(system: SystemUnderTest, people: dict[str, str], browser: Any, page: Page) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    org, tag = f"web-{people['tag']}", people["tag"]
    browser.get(system.url + "/console/")
    # a wrong token: the error next to the field; then the right one, by keyboard alone
    page.fill("API token", "wrong").send_keys(Keys.ENTER)
    page.text("[data-error-for=token]", "Invalid token")
    page.shot("login")
    page.fill("API token", people["token"]).send_keys(Keys.ENTER)
    page.text("h1", "Organizations")
    assert people["token"] not in browser.execute_script("return document.cookie")

    # an org (a bad slug is shown next to its field), a project, a key
    page.fill("Name", "Web shop")
    page.fill("Slug (optional)", "Bad Slug!")
    page.button("Create organization").click()
    page.text("[data-error-for=slug]", "valid slug")
    page.shot("orgs")
    page.fill("Slug (optional)", org)
    page.button("Create organization").click()
    page.text("h1", "Web shop")
    # a team: created, listed, deleted
    team_form = page.css("form:has(input[name=relayName])").find_element(By.XPATH, "preceding::form[1]")
    page.fill("Team name", "Mobile", within=team_form)
    page.button("Create team").click()
    team_row = page.text("tbody tr", "Mobile")
    page.button("Delete", within=team_row).click()
    page.button("Really delete?", within=team_row).click()
    page.text("#status", "Team mobile deleted")
    # the org trusts the registered relay (a bad key: the catalogue's error next to the field)
    trust = page.css("form:has(input[name=relayName])")
    page.fill("Relay public key", "not-a-key", within=trust)
    page.button("Trust relay", within=trust).click()
    page.text("[data-error-for=trustedRelays]", "")
    assert page.css("[data-error-for=trustedRelays]").text, "no error next to the relay key"
    page.fill("Relay public key", people["relay"], within=trust)
    page.fill("Name", "edge-1", within=trust)
    page.button("Trust relay", within=trust).click()
    page.text("td", "edge-1")
    page.fill("Name", "Storefront", within=page.css("form:has(select)"))
    page.button("Create project").click()
    page.text("h1", "Storefront")
    page.fill("Key name", "browser-key")
    page.button("Create key").click()
    page.text("td a", "browser-key")
    page.shot("project")

    # disable and enable the key
    page.button("Disable", within=page.text("tbody tr", "browser-key")).click()
    page.wait.until(lambda d: "disabled" in page.text("tbody tr", "browser-key").text)
    page.button("Enable", within=page.text("tbody tr", "browser-key")).click()
    page.wait.until(lambda d: "active" in page.text("tbody tr", "browser-key").text)

    # an option with a bad value: the API's error next to it; then a good one
    editor = page.css('[data-option="sentry:blacklisted_ips"]')
    page.fill("Value of sentry:blacklisted_ips", "not-an-ip", within=editor)
    page.button("Save", within=editor).click()
    error = page.text('[data-error-for="sentry:blacklisted_ips"]', "sentry:blacklisted_ips")
    assert "not-an-ip" in error.text or "invalid" in error.text.lower(), error.text
    page.shot("option-error")
    page.fill("Value of sentry:blacklisted_ips", "10.0.0.0/8", within=editor)
    page.button("Save", within=editor).click()
    page.wait.until(lambda d: "10.0.0.0/8" in editor.text and not editor.find_element(
        By.CSS_SELECTOR, "[data-error-for]").text)
    assert "10.0.0.0/8" in editor.find_element(By.CSS_SELECTOR, "[data-layer=project]").text
    assert editor.find_element(By.CSS_SELECTOR, ".source").get_attribute("data-source") == "project"

    # live: a change made elsewhere (the CLI, on a project of its own, so storefront's history
    # below stays the browser's) appears as its config goes live, with its propagation time
    system.cli_ok("project", "create", org, "live-probe", "--json")
    browser.get(f"{system.url}/console/#/live")
    page.text("#live-state", "Connected")
    system.cli_ok("project", "option", "set", f"{org}/live-probe", "filters:localhost", "true")
    row = page.text("tbody tr", f"{org}/live-probe")
    assert row.find_element(By.CSS_SELECTOR, ".propagation").text.endswith(" ms")
    page.shot("live")
    browser.get(f"{system.url}/console/#/project/{org}/storefront")
    page.text("h1", "Storefront")

    # an event's AI fix suggestion, streamed into the page as the model writes
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=page.shots, delete=False) as file:
        json.dump(error_event(), file)
    event_id = system.cli_ok("event", "store", file.name, "--project", f"{org}/storefront", "--json")["eventId"]
    events = page.css("#events")
    page.fill("Event ID", "nothex", within=events)
    page.button("Suggest a fix", within=events).click()
    page.text('[data-error-for="event_id"]', "32 hex digits")
    page.fill("Event ID", str(event_id), within=events)
    page.button("Suggest a fix", within=events).click()
    page.text("#ai-state", "Done.")
    assert page.css("pre.suggestion").get_attribute("textContent") == REPLY
    assert "cache" not in page.css("#ai-state").text  # streamed, not the cached text
    page.shot("ai-suggestion")

    # real events from sentry-sdk through the gateway: listed, paged, one with its stack trace
    sent = capture(system, people["token"], org, "storefront", 2)
    eventually(lambda: {e["id"] for e in call(system, "GET", f"/api/0/projects/{org}/storefront/events/",
                                             headers={"Authorization": f"Bearer {people['token']}"})[2]} >= set(sent),
               "the sdk's events listed")
    page.text("a", "Recent events").click()
    page.text("h1", "Recent events")
    assert {el.get_attribute("data-event") for el in browser.find_elements(By.CSS_SELECTOR, "tr[data-event]")} >= set(sent)
    page.shot("events")
    browser.get(f"{system.url}/console/#/events/{org}/storefront?per_page=1")
    page.wait.until(lambda d: "per_page=1 " in (d.find_element(By.ID, "main").get_attribute("data-rendered") or ""))
    first = page.css("tr[data-event]").get_attribute("data-event")
    page.text(".pager a", "Older").click()
    page.wait.until(lambda d: page.css("tr[data-event]").get_attribute("data-event") != first)
    page.text(".pager a", "Newer")
    page.text(".pager a", "25").click()  # the page size by its link: the first page again
    page.wait.until(lambda d: "per_page=25 " in (d.find_element(By.ID, "main").get_attribute("data-rendered") or ""))
    link = page.css(f'tr[data-event="{sent[0]}"] a')
    assert "ValueError" in page.css(f'tr[data-event="{sent[0]}"]').text
    link.send_keys(Keys.ENTER)  # by keyboard
    page.text("h1", "ValueError")
    frame = page.text("#stacktrace .frame", "raise_in_checkout in ")  # the function, not a call of it
    assert frame.find_element(By.CSS_SELECTOR, ".frame-function").text == "raise_in_checkout"
    assert "test_console.py" in frame.text and "line " in frame.text, frame.text
    assert "raise ValueError" in frame.find_element(By.CSS_SELECTOR, ".frame-context .here").text
    page.shot("event")
    events = page.css("#events")
    assert events.find_element(By.NAME, "event_id").get_attribute("value") == sent[0]
    events.find_element(By.NAME, "consent").send_keys(Keys.SPACE)
    page.button("Suggest a fix", within=events).click()
    page.text("#ai-state", "Done.")
    assert page.css("pre.suggestion").get_attribute("textContent") == REPLY
    assert "cache" not in page.css("#ai-state").text  # streamed as the model wrote
    page.shot("event-suggestion")
    # a message with the stack it was sent from: that stack, from its thread
    message = capture_message(system, people["token"], org, "storefront")
    eventually(lambda: call(system, "GET", f"/api/0/projects/{org}/storefront/events/{message}/",
                            headers={"Authorization": f"Bearer {people['token']}"})[0] == 200, "the message stored")
    browser.get(f"{system.url}/console/#/event/{org}/storefront/{message}")
    page.text("h1", "checkout is slow")
    page.text("#stacktrace .frame", "capture_message in ")
    page.text("p a", "storefront").click()
    page.text("h1", "Storefront")

    # the key: its config now, and the history with the option's revision, who and when
    page.text("td a", "browser-key").click()
    page.text("#config", "10.0.0.0/8")
    revision = page.text("article.revision", "ProjectOptionSet")
    assert f"user:{people['admin']}" in revision.text
    added = [el.text for el in revision.find_elements(By.CSS_SELECTOR, ".diff .add")]
    assert any("10.0.0.0/8" in line for line in added), added
    assert all(f"user:{people['admin']}" in el.text for el in browser.find_elements(By.CSS_SELECTOR, "article.revision")
               if "Key" in el.text.split("\n")[0] or "Option" in el.text.split("\n")[0])
    # the key's rate limit: a bad value is the API's error next to the field, then a good one
    settings = page.css("#key-settings")
    page.fill("Rate limit: events", "many", within=settings)
    page.fill("per seconds", "60", within=settings)
    page.button("Save key", within=settings).click()
    page.text("[data-error-for=count]", "integers")
    page.fill("Rate limit: events", "100", within=settings)
    page.button("Save key", within=settings).click()
    page.text("#rate-limit", "100 events per 60 s")
    assert not settings.find_element(By.CSS_SELECTOR, "[data-error-for=count]").text
    disabled = page.text("article.revision", "KeyDisabled")
    assert [el.text for el in disabled.find_elements(By.CSS_SELECTOR, ".diff .add")] == ['+     "active": false,'], \
        disabled.text
    browser.execute_script("arguments[0].scrollIntoView()", revision)
    page.shot("key-history")

    # the relays, at phone width too
    browser.find_element(By.LINK_TEXT, "Relays").click()
    relay_row = page.text("tbody tr", people["relay"])
    assert org in relay_row.text, relay_row.text  # trusted by the org
    # allow a relay (a bad key: the API's error next to the field), then ban it
    allow = page.css("#allow-relay")
    page.fill("Relay public key", "not-a-key", within=allow)
    page.button("Allow relay", within=allow).click()
    page.text("[data-error-for=publicKey]", "43 url-safe base64")
    new_relay = str(sentry_relay.generate_key_pair()[1])
    page.fill("Relay public key", new_relay, within=allow)
    allow.find_element(By.NAME, "internal").send_keys(Keys.SPACE)  # by keyboard
    page.button("Allow relay", within=allow).click()
    allowed = page.css(f'tr[data-relay="{new_relay}"]')
    assert [allowed.find_element(By.CSS_SELECTOR, f"td.{c}").text for c in ("internal", "banned")] == ["yes", "no"]
    assert not allow.find_element(By.CSS_SELECTOR, "[data-error-for=publicKey]").get_attribute("textContent")
    page.button("Ban", within=allowed).click()
    page.button("Really ban?", within=allowed).click()
    page.wait.until(lambda d: page.css(f'tr[data-relay="{new_relay}"] td.banned').text == "yes")
    shown = call(system, "GET", f"/api/0/relayctl/relays/{new_relay}/",
                 headers={"Authorization": f"Bearer {people['token']}"})[2]
    assert shown["banned"] is True and shown["internal"] is False, shown  # a ban ends internal access
    assert page.css(f'tr[data-relay="{new_relay}"] td.internal').text == "no"
    page.shot("relays")
    browser.set_window_size(390, 844)
    page.shot("relays-phone")
    browser.find_element(By.LINK_TEXT, "Organizations").click()
    page.text("td a", "Web shop").click()
    page.text("h1", "Web shop")
    page.shot("org-phone")
    page.text("td a", "Storefront").click()
    page.text("h1", "Storefront")
    page.shot("project-phone")
    page.text("a", "Recent events").click()
    page.css(f'tr[data-event="{sent[0]}"] a').click()
    page.text("#stacktrace .frame", "raise_in_checkout in ")
    page.shot("event-phone")
    page.text("p a", "storefront").click()
    page.text("h1", "Storefront")
    page.text("td a", "browser-key").click()
    page.text("#config", "10.0.0.0/8")
    page.shot("key-phone")
    browser.set_window_size(1280, 900)
    browser.back()
    page.text("h1", "Storefront")

    # delete the key, log out
    row = page.text("tbody tr", "browser-key")
    public_key = row.find_element(By.TAG_NAME, "code").text
    page.button("Delete", within=row).click()
    page.button("Really delete?", within=row).click()
    page.text("#status", "Key deleted")
    page.wait.until(lambda d: "browser-key" not in d.find_element(By.TAG_NAME, "main").text)
    keys = call(system, "GET", f"/api/0/projects/{org}/storefront/keys/",
                headers={"Authorization": f"Bearer {people['token']}"})[2]
    assert public_key not in {k["public"] for k in keys}

    # option sources: the template's and the org's values inherited, where each value comes
    # from; the project's own set, then unset (its template's again)
    option_sources(system, page, org)
    page.button("Log out").click()
    page.text("h1", "Log in")
    page.shot("logged-out")
    assert tag


def option_sources(system: SystemUnderTest, page: Page, org: str) -> None:
    """A project made from a template in an org with an option of its own: the editor shows
    each layer and the source, and a project value set then unset."""
    from selenium.webdriver.common.by import By

    system.cli_ok("org", "option", "set", org, "sentry:sensitive_fields", '["card_number"]')
    system.cli_ok("org", "template", "set", org, "web", '{"sentry:origins": ["shop.example.com"]}')
    system.cli_ok("project", "create", org, "templated", "--template", "web", "--json")
    page.driver.get(f"{system.url}/console/#/project/{org}/templated")
    page.text("h1", "templated")

    def source(editor: Any) -> str:
        return str(editor.find_element(By.CSS_SELECTOR, ".source").get_attribute("data-source"))

    def layer(editor: Any, name: str) -> str:
        return str(editor.find_element(By.CSS_SELECTOR, f"[data-layer={name}]").text)

    origins = page.css('[data-option="sentry:origins"]')
    assert "shop.example.com" in layer(origins, "template") and layer(origins, "project") == "not set"
    assert source(origins) == "template" and "template “web”" in origins.find_element(By.CSS_SELECTOR, ".source").text
    assert "list of strings" in origins.text and '"*"' in origins.text  # type and default
    sensitive = page.css('[data-option="sentry:sensitive_fields"]')
    assert "card_number" in layer(sensitive, "org") and source(sensitive) == "org"
    assert "card_number" in layer(sensitive, "value")
    assert layer(page.css('[data-option="sentry:scrub_data"]'), "value") == "true"
    page.driver.execute_script("arguments[0].scrollIntoView()", origins)
    page.shot("option-sources")
    page.fill("Value of sentry:origins", "own.example.com", within=origins)
    page.button("Save", within=origins).click()
    page.wait.until(lambda d: source(origins) == "project")
    assert "own.example.com" in layer(origins, "value") and "shop.example.com" in layer(origins, "template")
    page.button("Unset (inherit)", within=origins).click()
    page.wait.until(lambda d: source(origins) == "template")
    assert layer(origins, "project") == "not set" and "shop.example.com" in layer(origins, "value")
    assert origins.find_element(By.TAG_NAME, "textarea").get_attribute("value") == "shop.example.com"
    page.text("#status", "sentry:origins unset")
