"""Open a report in headless Chromium and check it the way a reader's browser would see it.

Drives Chromium over the DevTools protocol on a pipe (``--remote-debugging-pipe``: commands on fd 3,
replies and events on fd 4, each a NUL-terminated JSON message), so only the standard library is
needed. It loads the HTML from disk, records console errors, uncaught exceptions, failed requests and
any request that leaves the file (the report must need no network), checks that every image decoded,
and saves a screenshot of the top of the page.

    python -m reports.browser_check out/report.html --screenshot reports/examples/screenshot.png

Exit status 0 when the page is clean, 1 when it is not, 2 when Chromium cannot be found or started
(``reports/browser_check.sh`` installs Debian's chromium first).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import pathlib
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Flags for a closed network and a machine without a GPU or display.
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
    "--remote-debugging-pipe",
)


@dataclass
class CheckResult:
    """What the browser saw. ``clean`` is the verdict."""

    url: str
    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    images: int = 0
    broken_images: int = 0
    sections: int = 0
    title: str = ""

    @property
    def clean(self) -> bool:
        return not (self.console_errors or self.failed_requests or self.external_requests or self.broken_images)


class BrowserError(RuntimeError):
    """Chromium is missing, did not start, or did not answer in time."""


def find_chromium(explicit: str | None = None) -> str:
    """The Chromium binary: ``explicit``, else the first of the usual names on PATH."""
    for name in ((explicit,) if explicit else CANDIDATES):
        path = shutil.which(name) if name else None
        if path:
            return path
    raise BrowserError(f"no Chromium found (tried {', '.join((explicit,) if explicit else CANDIDATES)}); "
                       "run reports/browser_check.sh, which installs Debian's chromium")


class _Pipe:
    """The DevTools protocol over Chromium's fd 3 / fd 4 pipe pair."""

    def __init__(self, binary: str, profile: str, width: int, height: int) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire_fds() -> None:  # in the child, before exec: the pipe ends become fds 3 and 4
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        args = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, pass_fds=(3, 4), preexec_fn=wire_fds)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next_id = 0
        self._replies: dict[int, queue.Queue] = {}
        self.events: queue.Queue = queue.Queue()
        self._stderr: list[bytes] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self._stderr.extend(self.proc.stderr), daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while True:
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                self.events.put(None)  # Chromium went away
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message and message["id"] in self._replies:
                    self._replies[message["id"]].put(message)
                else:
                    self.events.put(message)

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        self._next_id += 1
        reply: queue.Queue = queue.Queue()
        self._replies[self._next_id] = reply
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        try:
            answer = reply.get(timeout=timeout)
        except queue.Empty:
            raise BrowserError(f"Chromium did not answer {method} within {timeout:.0f} s; stderr: "
                               f"{b''.join(self._stderr)[-2000:].decode(errors='replace')}") from None
        if "error" in answer:
            raise BrowserError(f"{method} failed: {answer['error']}")
        return answer.get("result", {})

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (BrowserError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # only the process this script started
            self.proc.wait()
        for fd in (self._to_chrome, self._from_chrome):
            try:
                os.close(fd)
            except OSError:
                pass


def _event_text(event: dict[str, Any]) -> str | None:
    """A console error or uncaught exception as one line, else None."""
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.exceptionThrown":
        details = params.get("exceptionDetails", {})
        return f"uncaught exception: {details.get('exception', {}).get('description') or details.get('text')}"
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        values = [a.get("value", a.get("description", "")) for a in params.get("args", [])]
        return f"console.{params.get('type')}: {' '.join(map(str, values))}"
    if method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
        entry = params["entry"]
        return f"log {entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip()
    return None


def check_report(html_path: pathlib.Path, screenshot: pathlib.Path | None = None, *, chromium: str | None = None,
                 width: int = 1280, height: int = 1000, timeout: float = 60.0,
                 pdf: pathlib.Path | None = None) -> CheckResult:
    """Load ``html_path`` in headless Chromium; return what it saw, save the top of the page as a PNG
    (``screenshot``) and the printed page, with the report's print style, as a PDF (``pdf``)."""
    html_path = pathlib.Path(html_path).resolve()
    if not html_path.is_file():
        raise FileNotFoundError(f"html_path: no report at {html_path}")
    url = html_path.as_uri()
    binary = find_chromium(chromium)
    result = CheckResult(url)
    with tempfile.TemporaryDirectory(prefix="tlstm-chromium-") as profile:
        pipe = _Pipe(binary, profile, width, height)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Runtime", "Log", "Network", "Page"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
            pipe.send("Page.navigate", {"url": url}, session=session)
            deadline = time.monotonic() + timeout
            loaded = False
            settle_until = None
            while True:
                now = time.monotonic()
                if now > deadline:
                    raise BrowserError(f"the page did not finish loading within {timeout:.0f} s")
                if settle_until is not None and now > settle_until:
                    break
                try:
                    event = pipe.events.get(timeout=0.2)
                except queue.Empty:
                    continue
                if event is None:
                    raise BrowserError("Chromium exited while loading the page")
                if event.get("sessionId") not in (None, session):
                    continue
                method, params = event.get("method"), event.get("params", {})
                text = _event_text(event)
                if text:
                    result.console_errors.append(text)
                elif method == "Network.requestWillBeSent":
                    request_url = params.get("request", {}).get("url", "")
                    if not request_url.startswith(("file:", "data:", "about:")):
                        result.external_requests.append(request_url)
                elif method == "Network.loadingFailed":
                    result.failed_requests.append(f"{params.get('errorText')} ({params.get('type')})")
                elif method == "Network.responseReceived":
                    status = params.get("response", {}).get("status", 0)
                    if status >= 400:
                        result.failed_requests.append(f"HTTP {status}: {params['response'].get('url')}")
                elif method == "Page.loadEventFired" and not loaded:
                    loaded = True
                    settle_until = time.monotonic() + 1.0  # late console messages and requests
            probe = ("JSON.stringify({images: document.images.length, broken: Array.from(document.images)"
                     ".filter(i => !(i.complete && i.naturalWidth > 0)).length, sections: "
                     "document.querySelectorAll('section').length, title: document.title})")
            value = pipe.send("Runtime.evaluate", {"expression": probe, "returnByValue": True},
                              session=session)["result"]["value"]
            seen = json.loads(value)
            result.images, result.broken_images = seen["images"], seen["broken"]
            result.sections, result.title = seen["sections"], seen["title"]
            if screenshot is not None:
                shot = pipe.send("Page.captureScreenshot", {"format": "png"}, session=session)
                screenshot = pathlib.Path(screenshot)
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                screenshot.write_bytes(base64.b64decode(shot["data"]))
            if pdf is not None:
                printed = pipe.send("Page.printToPDF", {"printBackground": True, "preferCSSPageSize": False},
                                    session=session, timeout=timeout)
                pdf = pathlib.Path(pdf)
                pdf.parent.mkdir(parents=True, exist_ok=True)
                pdf.write_bytes(base64.b64decode(printed["data"]))
        finally:
            pipe.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html", type=pathlib.Path, help="the report to open")
    parser.add_argument("--screenshot", type=pathlib.Path, default=None, help="save the top of the page here (PNG)")
    parser.add_argument("--pdf", type=pathlib.Path, default=None, help="save the printed page here (PDF)")
    parser.add_argument("--chromium", default=None, help="the browser binary (default: found on PATH)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1000)
    args = parser.parse_args(argv)
    try:
        result = check_report(args.html, args.screenshot, chromium=args.chromium, width=args.width,
                              height=args.height, pdf=args.pdf)
    except (BrowserError, FileNotFoundError) as error:
        print(f"browser check could not run: {error}", file=sys.stderr)
        return 2
    print(f"loaded {result.url}: title {result.title!r}, {result.sections} sections, "
          f"{result.images} images ({result.broken_images} broken)")
    print(f"console errors: {len(result.console_errors)}, failed requests: {len(result.failed_requests)}, "
          f"requests leaving the file: {len(result.external_requests)}")
    for line in result.console_errors + result.failed_requests + result.external_requests:
        print(f"  {line}")
    if args.screenshot:
        print(f"screenshot: {args.screenshot}")
    if args.pdf:
        print(f"printed: {args.pdf}")
    print("clean" if result.clean else "NOT clean")
    return 0 if result.clean else 1


if __name__ == "__main__":
    sys.exit(main())
