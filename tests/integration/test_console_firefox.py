"""The console in Firefox: Debian's firefox-esr, headless, driven over WebDriver BiDi by
tests/bidi.py (no geckodriver). Logs in by keyboard, walks every page - at desktop and at
phone width - creates an org, changes an option (a bad value first: the API's error next to
the field), and fails on any JavaScript error Firefox logged (uncaught exceptions and
console errors). Screenshots of each page go to the test's tmp dir."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bidi import FIREFOX, Firefox
from tests.integration.test_console import capture
from tests.system import SystemUnderTest, http_request
from tests.waiting import eventually

# The page's own helpers, run in it: an element by its label, the text of a selector.
BY_LABEL = """(label, scope) => {
  const root = scope ? document.querySelector(scope) : document;
  for (const el of root.querySelectorAll('label'))
    if (el.textContent.trim() === label && el.offsetParent) return document.getElementById(el.htmlFor);
  return null;
}"""
BUTTON = """(label, scope) => {
  const root = scope ? document.querySelector(scope) : document;
  return [...root.querySelectorAll('button')].find(
    (b) => b.textContent.trim() === label && !b.disabled && b.offsetParent) || null;
}"""
TEXT = "(selector) => [...document.querySelectorAll(selector)].map((e) => e.textContent).join('\\n')"


@pytest.fixture(scope="module")
def firefox() -> Iterator[Firefox]:
    """One headless Firefox for the module (first in each test's arguments: without
    firefox-esr the tests skip before anything else is set up)."""
    if FIREFOX is None:
        pytest.skip("needs Debian's firefox-esr (apt-get install firefox-esr)")
    with Firefox(FIREFOX) as browser:
        yield browser


@pytest.fixture(scope="module")
def world(system: SystemUnderTest) -> dict[str, Any]:
    """An admin (relayctl.admin) who owns an org with a project, its key and one real event."""
    tag = uuid.uuid4().hex[:6]
    admin, org = f"fox-{tag}", f"fox-org-{tag}"
    system.cli_ok("user", "create", admin)
    system.cli_ok("permissions", "add", "-u", admin, "-p", "relayctl.admin")
    token = system.cli_ok("token", "create", admin, "--json")["token"]
    system.cli_ok("org", "create", org, "--name", "Fox org")
    system.cli_ok("org", "member", "add", org, admin, "--role", "owner")
    created = system.cli_ok("project", "create", org, "shop", "--name", "Shop", "--json")
    [event_id] = capture(system, token, org, "shop", 1)

    def listed() -> bool:
        status, _, body = http_request(f"{system.url}/api/0/projects/{org}/shop/events/",
                                       headers={"Authorization": f"Bearer {token}"})
        return status == 200 and event_id in {e["id"] for e in json.loads(body)}
    eventually(listed, "the sdk's event listed")
    return {"tag": tag, "token": token, "org": org, "key": created["publicKey"], "event": event_id}


class FirefoxPage:
    """The console in Firefox: hash routes, labels, waits, screenshots and checks of each page."""

    def __init__(self, browser: Firefox, base: str, shots: Path) -> None:
        self.browser, self.base, self.shots = browser, base, shots

    def rendered(self) -> str:
        return str(self.browser.run("() => document.getElementById('main').dataset.rendered || ''"))

    def goto(self, route: str) -> None:
        """Open a route (`#/...`) and wait until the page has rendered it."""
        before = self.rendered()
        self.browser.run("(route) => { location.hash = route; }", route)
        eventually(lambda: (lambda now: now != before and now.startswith(route + " "))(self.rendered()),
                   f"{route} rendered")

    def text(self, selector: str, contains: str, timeout: float = 15.0) -> str:
        return str(eventually(lambda: (lambda t: t if contains in t else "")(self.browser.run(TEXT, selector)),
                              f"{selector} containing {contains!r}", timeout))

    def node(self, function: str, *args: Any) -> dict[str, Any]:
        """The element `function` returns in the page, waited for."""
        def found() -> Any:
            result = self.browser.send("script.callFunction", {
                "functionDeclaration": function, "target": {"context": self.browser.context},
                "awaitPromise": False, "arguments": [{"type": "string", "value": a} if isinstance(a, str)
                                                     else {"type": "null"} for a in args],
                "serializationOptions": {"maxDomDepth": 0}})["result"]
            return {"sharedId": result["sharedId"]} if result.get("type") == "node" else None
        return eventually(found, f"{function.splitlines()[0]} {args}")  # type: ignore[no-any-return]

    def fill(self, label: str, value: str, scope: str | None = None, enter: bool = False) -> None:
        self.browser.type(self.node(BY_LABEL, label, scope), value, enter=enter)

    def press(self, label: str, scope: str | None = None) -> None:
        self.browser.click(self.node(BUTTON, label, scope))

    def shot(self, name: str) -> None:
        """A screenshot; the page no wider than the window, every control labelled, no
        JavaScript error so far."""
        self.browser.screenshot(self.shots / f"{name}.png")
        wider = self.browser.run("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert wider <= 1, f"{name}: the page is {wider}px wider than the window"
        unlabelled = self.browser.run("() => [...document.querySelectorAll('input, select, textarea')]"
                                      ".filter((e) => !e.labels || !e.labels.length).map((e) => e.outerHTML)")
        assert not unlabelled, f"{name}: controls without a label: {unlabelled}"
        assert not self.browser.errors(), f"{name}: JavaScript errors: {self.browser.errors()}"


def test_the_console_in_firefox(firefox: Firefox, system: SystemUnderTest, world: dict[str, Any],
                                tmp_path: Path) -> None:
    page = FirefoxPage(firefox, system.url, tmp_path)
    try:
        walk_through(system, world, page)
    except Exception:
        firefox.screenshot(tmp_path / "failure.png")
        print("log:", firefox.log_entries())
        print("page:", firefox.run("() => document.getElementById('main').outerHTML.slice(0, 3000)"))
        raise
    assert not firefox.errors(), firefox.errors()


def walk_through(system: SystemUnderTest, world: dict[str, Any], page: FirefoxPage) -> None:
    browser, org, tag = page.browser, world["org"], world["tag"]
    browser.navigate(system.url + "/console/")
    # a wrong token, then the right one, typed and sent with Enter
    page.text("h1", "Log in")
    page.fill("API token", "wrong", enter=True)
    page.text("[data-error-for=token]", "Invalid token")
    page.shot("login")
    page.fill("API token", world["token"], enter=True)
    page.text("h1", "Organizations")
    assert world["token"] not in browser.run("() => document.cookie")
    page.shot("orgs")

    # one create: an org (a bad slug first, its error next to the field)
    page.fill("Name", "Fox created")
    page.fill("Slug (optional)", "Bad Slug!")
    page.press("Create organization")
    page.text("[data-error-for=slug]", "valid slug")
    page.fill("Slug (optional)", f"fox-new-{tag}")
    page.press("Create organization")
    page.text("h1", "Fox created")
    page.shot("org-created")

    # one option change: a bad value, the API's error next to it; then a good one
    page.goto(f"#/project/{org}/shop")
    page.text("h1", "Shop")
    editor = '[data-option="sentry:blacklisted_ips"]'
    page.fill("Value of sentry:blacklisted_ips", "not-an-ip", scope=editor)
    page.press("Save", scope=editor)
    page.text(f'{editor} [data-error-for="sentry:blacklisted_ips"]', "not-an-ip")
    page.shot("option-error")
    page.fill("Value of sentry:blacklisted_ips", "10.0.0.0/8", scope=editor)
    page.press("Save", scope=editor)
    page.text(f"{editor} .source", "this project")
    assert "10.0.0.0/8" in page.text(f"{editor} [data-layer=value]", "10.0.0.0/8")
    assert page.browser.run(TEXT, f'{editor} [data-error-for="sentry:blacklisted_ips"]') == ""
    page.shot("project")

    # every other page: the org, the key (its config has the change), events, one event,
    # relays, live
    routes = {"org": (f"#/org/{org}", "h1", "Fox org"),
              "project": (f"#/project/{org}/shop", "h1", "Shop"),
              "key": (f"#/key/{org}/shop/{world['key']}", "#config", "10.0.0.0/8"),
              "events": (f"#/events/{org}/shop", "tr[data-event]", "ValueError"),
              "event": (f"#/event/{org}/shop/{world['event']}", "#stacktrace .frame", "raise_in_checkout in "),
              "relays": ("#/relays", "h1", "Relays"),
              "live": ("#/live", "#live-state", "Connected"),
              "orgs": ("#/orgs", "h1", "Organizations")}
    for name, (route, selector, contains) in routes.items():
        page.goto(route)
        page.text(selector, contains)
        page.shot(name)

    # at phone width
    browser.viewport(390, 844)
    assert browser.run("() => innerWidth") == 390
    for name, (route, selector, contains) in routes.items():
        page.goto(route)
        page.text(selector, contains)
        page.shot(f"{name}-phone")
    page.goto(f"#/key/{org}/shop/{world['key']}")
    page.text("article.revision", "ProjectOptionSet")
    browser.viewport(1280, 900)

    page.press("Log out")
    page.text("h1", "Log in")
    page.shot("logged-out")


def test_a_javascript_error_in_a_console_page_fails_the_check(firefox: Firefox, system: SystemUnderTest) -> None:
    """The check above can fail: an uncaught exception and a console.error in a console page
    are both reported (then forgotten, so later tests of the module start clean)."""
    firefox.navigate(system.url + "/console/")
    firefox.run("() => { setTimeout(() => { throw new Error('probe-thrown'); }, 0); console.error('probe-logged'); }")
    texts = eventually(lambda: (lambda t: t if {"Error: probe-thrown", "probe-logged"} <= t else None)(
        {str(e.get("text")) for e in firefox.errors()}), "both errors reported")
    assert texts
    firefox.forget_log()
    assert not firefox.errors()
