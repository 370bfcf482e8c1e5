"""A real headless Chromium for tests, driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
NUL-separated JSON on file descriptors 3 and 4; stdlib only).

The protocol gives what the command-line switches cannot: the page's DOM with scripts disabled
(`--dump-dom` prints nothing then), every request the page makes (file:// and data: included, the browser's
own background traffic excluded), and a screenshot of the whole page. Every network request the browser makes
at all goes to a loopback sink posing as its proxy, so nothing ever leaves the machine (Chromium phones home
for component updates and sign-in even with --disable-background-networking).
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--no-default-browser-check"]


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class ProxySink:
    """A loopback listener the browser uses as its HTTP proxy: records each request line, answers 403."""

    def __init__(self) -> None:
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(32)
        self.port = self._server.getsockname()[1]
        self.requests: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    head = conn.recv(4096).split(b"\r\n", 1)[0]
                    self.requests.append(head.decode("latin-1"))
                    conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    def close(self) -> None:
        # close() alone does not wake a thread blocked in accept(); shutdown() does.
        try:
            self._server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._server.close()
        self._thread.join(timeout=5)


@dataclass
class Page:
    """What one page load showed: its DOM (outer HTML after load), the URLs it requested, console messages."""

    dom: str
    requests: list[str]
    console: list[str] = field(default_factory=list)  # console calls, uncaught exceptions, browser log entries
    dialogs: list[str] = field(default_factory=list)  # alert()/confirm() messages (each dismissed)
    screenshot: bytes | None = None
    value: Any = None  # what `evaluate` returned
    pdf: bytes | None = None


class Browser:
    """One Chromium process (started in __enter__, stopped in __exit__ by its own PID)."""

    def __init__(self, exe: str, profile: Path, sink: ProxySink, timeout: float = 60.0) -> None:
        self.exe, self.profile, self.sink, self.timeout = exe, profile, sink, timeout
        self._next = 0
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._replies: dict[int, dict[str, Any]] = {}
        self._lock = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Browser:
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()

        def wire() -> None:  # in the child: the protocol's fds 3 (commands in) and 4 (replies out)
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self._proc = subprocess.Popen(
            [self.exe, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-pipe",
             f"--proxy-server=http://127.0.0.1:{self.sink.port}", "--proxy-bypass-list=<-loopback>", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=wire,
            close_fds=False)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._out = os.fdopen(to_browser_w, "wb", buffering=0)
        self._in = os.fdopen(from_browser_r, "rb", buffering=0)
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        try:
            self.call("Browser.close", timeout=10)
        except (OSError, TimeoutError, RuntimeError):
            pass
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._out.close()
        self._in.close()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = self._in.read(65536)
            except (OSError, ValueError):
                chunk = b""
            if not chunk:
                with self._lock:
                    self._lock.notify_all()
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        self._replies[message["id"]] = message
                        self._lock.notify_all()
                else:
                    self._events.put(message)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float | None = None) -> dict[str, Any]:
        self._next += 1
        ident = self._next
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._out.write(json.dumps(message).encode() + b"\0")
        with self._lock:
            if not self._lock.wait_for(lambda: ident in self._replies, timeout=timeout or self.timeout):
                raise TimeoutError(f"no answer to {method}")
            reply = self._replies.pop(ident)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def load(self, url: str, *, scripts: bool = True, width: int = 1280, height: int = 1000,
             screenshot: bool = False, screenshot_scale: float = 1.0, evaluate: str | None = None,
             media: str | None = None, pdf: bool = False) -> Page:
        """Open `url` in a new tab, wait for its load event, then read its DOM. `evaluate` is an expression
        run in the page after the load (its JSON value lands in Page.value); `media` emulates a CSS media
        type ("print") for it and the screenshot; `pdf` prints the page as Chromium's print dialog would."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page("", [])
        try:
            for method in ("Page.enable", "Network.enable", "Runtime.enable", "Log.enable"):
                self.call(method, session=session)
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
            if not scripts:
                self.call("Emulation.setScriptExecutionDisabled", {"value": True}, session)
            if media:
                self.call("Emulation.setEmulatedMedia", {"media": media}, session)
            self.call("Page.navigate", {"url": url}, session)
            while True:
                try:
                    event = self._events.get(timeout=self.timeout)
                except queue.Empty:
                    raise TimeoutError(f"{url} never finished loading") from None
                if self._take(event, session, page):
                    break
            if evaluate:
                result = self.call("Runtime.evaluate", {"expression": evaluate, "returnByValue": True,
                                                        "awaitPromise": True}, session)
                page.value = result.get("result", {}).get("value")
            root = self.call("DOM.getDocument", {"depth": 0}, session)["root"]["nodeId"]
            page.dom = self.call("DOM.getOuterHTML", {"nodeId": root}, session)["outerHTML"]
            if screenshot:
                # The whole page, scaled by `screenshot_scale` (a smaller picture decodes faster in tests).
                size = self.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
                clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": screenshot_scale}
                data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                            "clip": clip}, session)
                page.screenshot = base64.b64decode(data["data"])
            if pdf:
                data = self.call("Page.printToPDF", {"printBackground": False}, session)
                page.pdf = base64.b64decode(data["data"])
            # Late events of this load (a request a script made after the load event) count too.
            while not self._events.empty():
                self._take(self._events.get_nowait(), session, page)
            return page
        finally:
            self.call("Target.closeTarget", {"targetId": target})

    def _take(self, event: dict[str, Any], session: str, page: Page) -> bool:
        """Record one event of the page's session; True at its load event."""
        if event.get("sessionId") != session:
            return False
        method, params = event["method"], event.get("params", {})
        if method == "Network.requestWillBeSent":
            page.requests.append(params["request"]["url"])
        elif method == "Runtime.consoleAPICalled":
            page.console.append(" ".join(str(a.get("value", "")) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            page.console.append("exception: " + json.dumps(params["exceptionDetails"])[:500])
        elif method == "Log.entryAdded":
            page.console.append(f"{params['entry'].get('level')}: {params['entry'].get('text')}")
        elif method == "Page.javascriptDialogOpening":
            page.dialogs.append(params.get("message", ""))
            self._out.write(json.dumps({"id": -1, "method": "Page.handleJavaScriptDialog", "sessionId": session,
                                        "params": {"accept": False}}).encode() + b"\0")
        return method == "Page.loadEventFired"
