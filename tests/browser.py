"""Headless Chromium for tests and doc screenshots, driven over the DevTools protocol (websocket-client): find the
binary, start it with one page, load URLs, wait for what a page must show, evaluate JavaScript, click and type as a
user does (real input events, not ``element.click()``), take screenshots, and stop it (its whole session).

Used by tests/test_reader_study.py and experiments/mlflow_ui_screenshots.py (which imports it the way it imports
tests/servers.py). Needs a Chromium binary (``apt-get install chromium``, which .ci/run does; or set
``MEDTI_CHROMIUM``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

WIDTH, HEIGHT = 1600, 1000
CHROMIUM_NAMES = ("chromium", "chromium-browser", "chromium-headless-shell", "chrome-headless-shell",
                  "google-chrome", "google-chrome-stable")
# what Input.dispatchKeyEvent needs to type a key a page's keydown handler sees as ``event.key``
KEYS = {"ArrowLeft": ("ArrowLeft", 37), "ArrowRight": ("ArrowRight", 39), "ArrowUp": ("ArrowUp", 38),
        "ArrowDown": ("ArrowDown", 40), "Backspace": ("Backspace", 8), "Enter": ("Enter", 13)}


class BrowserError(RuntimeError):
    """Chromium did not start, a DevTools call failed, or a page did not show what was waited for."""


def find_chromium() -> str | None:
    """``$MEDTI_CHROMIUM``, else the first Chromium-like binary on PATH; None when there is none."""
    env = os.environ.get("MEDTI_CHROMIUM")
    if env:
        return env if Path(env).is_file() else shutil.which(env)
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium_version(binary: str) -> str:
    res = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60)
    return res.stdout.strip() or res.stderr.strip()


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Browser:
    """Headless Chromium with one page. ``local_storage``: keys set in every page's localStorage before its
    scripts run (a web app's remembered settings, e.g. a dismissed first-visit dialog)."""

    def __init__(self, binary: str, workdir: Path, width: int = WIDTH, height: int = HEIGHT,
                 local_storage: dict[str, str] | None = None):
        import websocket

        self.profile = workdir / "chromium-profile"
        self.profile.mkdir(parents=True, exist_ok=True)
        # a profile used before holds its old browser's port: read only what this browser writes
        (self.profile / "DevToolsActivePort").unlink(missing_ok=True)
        self.log = open(workdir / "chromium.log", "w+b")  # noqa: SIM115 (closed in close())
        args = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                f"--window-size={width},{height}", "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0", f"--user-data-dir={self.profile}", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--lang=en-US", "--force-device-scale-factor=1", "about:blank"]
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        self.ws = None
        self._id = 0
        try:
            port = self._devtools_port(timeout=60)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                targets = json.load(r)
            page = next(t for t in targets if t.get("type") == "page")
            self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], suppress_origin=True, timeout=60)
            self.call("Page.enable")
            self.resize(width, height)
            if local_storage:
                presets = json.dumps(local_storage)
                self.call("Page.addScriptToEvaluateOnNewDocument",
                          source=f"try {{ for (const [k, v] of Object.entries({presets})) localStorage.setItem(k, v);"
                                 " } catch (e) {}")
        except BaseException:
            self.close()
            raise

    def _devtools_port(self, timeout: float) -> int:
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker.is_file():
                lines = marker.read_text().split()
                if lines and lines[0].isdigit():
                    return int(lines[0])
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.log.seek(0)
        raise BrowserError(f"chromium did not open its DevTools port (exit {self.proc.poll()}):\n"
                           f"{self.log.read().decode(errors='replace')[-4000:]}")

    def resize(self, width: int, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)

    def call(self, method: str, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def eval(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise BrowserError(f"script failed: {res['exceptionDetails'].get('text')} in {expression[:200]}")
        return res.get("result", {}).get("value")

    def goto(self, url: str) -> None:
        """A fresh load of ``url`` (about:blank first: a hash route alone would be a same-document change)."""
        self.call("Page.navigate", url="about:blank")
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'", 60, "the document to load")

    def wait_for(self, expression: str, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(BrowserError):
                if self.eval(expression):
                    return
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout:.0f} s waiting for {what}; the page showed:\n"
                                   f"{self.text()[:1500]}")
            time.sleep(0.1)

    def text(self) -> str:
        with contextlib.suppress(Exception):
            return self.eval("document.body ? document.body.innerText : ''") or ""
        return ""

    def click(self, selector: str) -> None:
        """A left click with the mouse at the middle of the element ``selector`` finds (scrolled into view)."""
        box = self.eval(f"(() => {{const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
                        " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
                        " return [r.x + r.width / 2, r.y + r.height / 2];})()")
        if box is None:
            raise BrowserError(f"no element {selector!r} to click; the page showed:\n{self.text()[:1500]}")
        x, y = box
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        self.call("Input.dispatchMouseEvent", type="mousePressed", x=x, y=y, button="left", buttons=1, clickCount=1)
        self.call("Input.dispatchMouseEvent", type="mouseReleased", x=x, y=y, button="left", buttons=0, clickCount=1)

    def press(self, key: str) -> None:
        """Press and release ``key``: a printable character ("1") or a name in :data:`KEYS` ("ArrowLeft")."""
        if key == "Enter":  # with its text, so that it submits a form
            down = dict(type="keyDown", key=key, code="Enter", text="\r", windowsVirtualKeyCode=13)
        elif key in KEYS:
            code, vk = KEYS[key]
            down = dict(type="rawKeyDown", key=key, code=code, windowsVirtualKeyCode=vk)
        elif len(key) == 1:
            code = f"Digit{key}" if key.isdigit() else f"Key{key.upper()}"
            down = dict(type="keyDown", key=key, code=code, text=key, windowsVirtualKeyCode=ord(key.upper()))
        else:
            raise BrowserError(f"press: unknown key {key!r} (a character, or one of {sorted(KEYS)})")
        self.call("Input.dispatchKeyEvent", **down)
        self.call("Input.dispatchKeyEvent", **{**down, "type": "keyUp", "text": ""})

    def type_text(self, text: str) -> None:
        """Type ``text`` into the focused element."""
        self.call("Input.insertText", text=text)

    def drag(self, x: float, y: float, dx: float, dy: float = 0.0) -> None:
        """Press the left mouse button at (x, y), move by (dx, dy), release; then move the mouse out of the way."""
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        self.call("Input.dispatchMouseEvent", type="mousePressed", x=x, y=y, button="left", buttons=1, clickCount=1)
        for i in range(1, 11):
            self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x + dx * i / 10, y=y + dy * i / 10,
                      button="left", buttons=1)
            time.sleep(0.02)
        self.call("Input.dispatchMouseEvent", type="mouseReleased", x=x + dx, y=y + dy, button="left", buttons=1,
                  clickCount=1)
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=1, y=1)

    def screenshot(self, path: Path) -> Path:
        res = self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(res["data"]))
        return path

    def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                self.ws.close()
        _stop(self.proc)
        self.log.close()
