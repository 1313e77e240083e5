"""A small WebDriver BiDi client for Firefox: no geckodriver, nothing downloaded.

Firefox (ESR 128 and later) speaks WebDriver BiDi itself: started with
`--remote-debugging-port=0` it picks a free port and prints `WebDriver BiDi listening on
ws://127.0.0.1:PORT`; a client then opens `ws://127.0.0.1:PORT/session` and sends JSON
commands (`{"id", "method", "params"}`), each answered by a message of the same id, with
events (`{"type": "event", "method", "params"}`) in between. This module starts Firefox
headless on a fresh profile (first-run pages, telemetry, updates and background network
requests off), opens the session, and offers what the console's browser tests use:
navigate, evaluate a script, click and type with real input actions, set the viewport,
take a screenshot, and the log entries (`log.entryAdded`: JavaScript errors and console
messages) seen so far.

Spec: https://w3c.github.io/webdriver-bidi/
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import websocket

FIREFOX = shutil.which("firefox-esr") or shutil.which("firefox")
START_TIMEOUT = 60.0
COMMAND_TIMEOUT = 30.0

# Prefs of a quiet automation profile (what geckodriver's and Marionette's recommended
# prefs cover): no first-run or what's-new pages, no telemetry, updates, safe-browsing
# lists, captive-portal or connectivity checks, remote settings or add-on update requests.
PREFS: dict[str, Any] = {
    "app.normandy.enabled": False,
    "app.update.auto": False,
    "app.update.checkInstallTime": False,
    "app.update.disabledForTesting": True,
    "browser.aboutwelcome.enabled": False,
    "browser.discovery.enabled": False,
    "browser.newtabpage.enabled": False,
    "browser.newtabpage.activity-stream.feeds.system.topstories": False,
    "browser.newtabpage.activity-stream.feeds.topsites": False,
    "browser.ping-centre.telemetry": False,
    "browser.safebrowsing.blockedURIs.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.update.enabled": False,
    "browser.search.update": False,
    "browser.sessionstore.resume_from_crash": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage": "about:blank",
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.startup.page": 0,
    "browser.tabs.warnOnClose": False,
    "browser.topsites.contile.enabled": False,
    "browser.uitour.enabled": False,
    "captivedetect.canonicalURL": "",
    "datareporting.healthreport.uploadEnabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.policy.firstRunURL": "",
    "devtools.console.stdout.content": False,
    "dom.disable_open_during_load": False,
    "extensions.getAddons.cache.enabled": False,
    "extensions.update.enabled": False,
    "extensions.blocklist.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.dns.disablePrefetch": True,
    "network.http.speculative-parallel-limit": 0,
    "network.prefetch-next": False,
    "services.settings.server": "http://127.0.0.1:9/",
    "signon.rememberSignons": False,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "toolkit.telemetry.server": "",
    "toolkit.telemetry.unified": False,
}


class BiDiError(Exception):
    """A command the browser answered with an error (`error`, `message`)."""

    def __init__(self, method: str, error: str, message: str) -> None:
        super().__init__(f"{method}: {error}: {message}")
        self.error = error


class Firefox:
    """Headless Firefox on a fresh profile, one WebDriver BiDi session, one browsing context.

    Use as a context manager; `close()` ends the session, quits the browser and removes the
    profile."""

    def __init__(self, binary: str | None = None, width: int = 1280, height: int = 900) -> None:
        binary = binary or FIREFOX
        if binary is None:
            raise FileNotFoundError("firefox-esr is not installed")
        self.profile = Path(tempfile.mkdtemp(prefix="relayctl-firefox-"))
        (self.profile / "user.js").write_text(
            "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in PREFS.items()))
        self.process = subprocess.Popen(
            [binary, "--headless", "--no-remote", "--remote-debugging-port=0", "--profile", str(self.profile),
             "--width", str(width), "--height", str(height), "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.stderr: list[str] = []
        self.ws: websocket.WebSocket | None = None
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        try:
            url = self._listening()
            self.ws = websocket.create_connection(f"{url}/session", timeout=COMMAND_TIMEOUT,
                                                  suppress_origin=True)
            self.send("session.new", {"capabilities": {"alwaysMatch": {"acceptInsecureCerts": True}}})
            self.send("session.subscribe", {"events": ["log.entryAdded"]})
            self.context = self.send("browsingContext.getTree", {"maxDepth": 0})["contexts"][0]["context"]
        except BaseException:
            self.close()
            raise

    def _listening(self) -> str:
        """The websocket URL Firefox prints once its remote agent listens (its other stderr
        lines kept for a failure's message); then stderr is drained in the background."""
        assert self.process.stderr is not None
        found: list[str] = []
        ready = threading.Event()

        def read() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                self.stderr.append(line.rstrip())
                if not found and "WebDriver BiDi listening on " in line:
                    found.append(line.split("WebDriver BiDi listening on ", 1)[1].strip())
                    ready.set()
            ready.set()

        threading.Thread(target=read, name="firefox-stderr", daemon=True).start()
        if not ready.wait(START_TIMEOUT) or not found:
            raise RuntimeError("Firefox did not start its WebDriver BiDi agent: " + " | ".join(self.stderr[-20:]))
        return found[0]

    # -- the protocol --------------------------------------------------------------------------

    def send(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """One command; its result. Events that arrive before the answer are kept."""
        assert self.ws is not None
        self._next_id += 1
        wanted = self._next_id
        self.ws.send(json.dumps({"id": wanted, "method": method, "params": params or {}}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("type") == "event":
                self.events.append(message)
                continue
            if message.get("id") != wanted:
                continue
            if message.get("type") == "error":
                raise BiDiError(method, message.get("error", "error"), message.get("message", ""))
            return message.get("result")

    def log_entries(self) -> list[dict[str, Any]]:
        """Every `log.entryAdded` seen so far (a command first: events arrive with answers)."""
        self.send("browsingContext.getTree", {"maxDepth": 0})
        return [e["params"] for e in self.events if e.get("method") == "log.entryAdded"]

    def forget_log(self) -> None:
        """Forget the log entries seen so far (a test that made errors on purpose)."""
        self.log_entries()
        self.events = [e for e in self.events if e.get("method") != "log.entryAdded"]

    def errors(self) -> list[dict[str, Any]]:
        """The JavaScript errors so far: uncaught exceptions and `console.error` calls."""
        return [e for e in self.log_entries() if e.get("type") == "javascript" or e.get("level") == "error"]

    # -- what tests do -------------------------------------------------------------------------

    def navigate(self, url: str) -> None:
        self.send("browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"})

    def run(self, function: str, *args: Any) -> Any:
        """`function` (JavaScript source of a function, maybe async) called with JSON `args`
        in the page; its result as plain data (elements: their `outerHTML`-less remote form)."""
        result = self.send("script.callFunction", {
            "functionDeclaration": function, "target": {"context": self.context}, "awaitPromise": True,
            "arguments": [_remote(a) for a in args], "resultOwnership": "none",
            "serializationOptions": {"maxDomDepth": 0, "maxObjectDepth": 10}})
        if result.get("type") == "exception":
            details = result["exceptionDetails"]
            raise AssertionError(f"script failed: {details.get('text')} in {function[:200]}")
        return _plain(result["result"])

    def element(self, selector: str, contains: str = "") -> dict[str, Any]:
        """A remote reference (sharedId) to the first visible element matching `selector`
        whose text contains `contains`, or an AssertionError."""
        nodes = self.send("browsingContext.locateNodes", {
            "context": self.context, "locator": {"type": "css", "value": selector}, "maxNodeCount": 200,
            "serializationOptions": {"maxDomDepth": 0}})["nodes"]
        for node in nodes:
            ref = {"sharedId": node["sharedId"]}
            shown = self.send("script.callFunction", {
                "functionDeclaration": "(el, text) => !!(el.offsetParent || el.getClientRects().length)"
                                       " && el.textContent.includes(text)",
                "target": {"context": self.context}, "awaitPromise": False,
                "arguments": [ref, {"type": "string", "value": contains}], "resultOwnership": "none"})
            if shown.get("result", {}).get("value") is True:
                return ref
        raise AssertionError(f"no visible {selector!r} containing {contains!r}")

    def click(self, element: dict[str, Any]) -> None:
        """A real pointer click in the middle of `element` (scrolled into view first)."""
        self.send("script.callFunction", {
            "functionDeclaration": "(el) => el.scrollIntoView({block: 'center'})",
            "target": {"context": self.context}, "awaitPromise": False, "arguments": [element]})
        self.send("input.performActions", {"context": self.context, "actions": [{
            "type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"}, "actions": [
                {"type": "pointerMove", "x": 0, "y": 0, "origin": {"type": "element", "element": element}},
                {"type": "pointerDown", "button": 0}, {"type": "pointerUp", "button": 0}]}]})
        self.send("input.releaseActions", {"context": self.context})

    def type(self, element: dict[str, Any], text: str, *, clear: bool = True, enter: bool = False) -> None:
        """Focus `element` (emptied first when `clear`) and type `text` with real key events;
        then Enter when `enter`."""
        self.send("script.callFunction", {
            "functionDeclaration": "(el, clear) => { el.focus(); if (clear) el.value = ''; }",
            "target": {"context": self.context}, "awaitPromise": False,
            "arguments": [element, {"type": "boolean", "value": clear}]})
        keys: list[dict[str, Any]] = []
        for char in text + ("\ue007" if enter else ""):
            keys += [{"type": "keyDown", "value": char}, {"type": "keyUp", "value": char}]
        self.send("input.performActions", {"context": self.context, "actions": [
            {"type": "key", "id": "keyboard", "actions": keys}]})
        self.send("input.releaseActions", {"context": self.context})

    def viewport(self, width: int, height: int) -> None:
        self.send("browsingContext.setViewport", {"context": self.context,
                                                  "viewport": {"width": width, "height": height}})

    def screenshot(self, path: Path) -> None:
        data = self.send("browsingContext.captureScreenshot", {"context": self.context})["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            if self.ws is not None:
                try:
                    self.send("browser.close")
                except (BiDiError, websocket.WebSocketException, OSError):
                    pass
                self.ws.close()
        finally:
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Firefox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _remote(value: Any) -> dict[str, Any]:
    """A JSON value as a BiDi local value (elements: pass their reference as it is)."""
    if isinstance(value, dict) and "sharedId" in value:
        return value
    if value is None:
        return {"type": "null"}
    if isinstance(value, bool):
        return {"type": "boolean", "value": value}
    if isinstance(value, (int, float)):
        return {"type": "number", "value": value}
    if isinstance(value, str):
        return {"type": "string", "value": value}
    if isinstance(value, (list, tuple)):
        return {"type": "array", "value": [_remote(v) for v in value]}
    if isinstance(value, dict):
        return {"type": "object", "value": [[str(k), _remote(v)] for k, v in value.items()]}
    raise TypeError(f"cannot pass a {type(value).__name__} to the page")


def _plain(remote: dict[str, Any]) -> Any:
    """A BiDi remote value as plain Python data (nodes and other objects: their type)."""
    kind = remote.get("type")
    if kind in ("undefined", "null"):
        return None
    if kind in ("string", "boolean"):
        return remote["value"]
    if kind == "number":
        value = remote["value"]
        return value if isinstance(value, (int, float)) else float(value)  # "NaN", "-0", ...
    if kind == "array":
        return [_plain(v) for v in remote.get("value", [])]
    if kind == "object":
        return {(k if isinstance(k, str) else str(_plain(k))): _plain(v) for k, v in remote.get("value", [])}
    return {"type": kind}
