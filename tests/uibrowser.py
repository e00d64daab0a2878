"""Headless Chromium, driven over the DevTools protocol on a pipe, to check what a person sees.

No Python dependency and no browser download: it runs the system's ``chromium`` (Debian's
package) with ``--remote-debugging-pipe`` (requests on fd 3, replies on fd 4, NUL-separated
JSON), so it can wait for text to appear, click, hover and take screenshots. The checks of the
MLflow UI that use it are in :mod:`.uicheck`.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["CHROMIUM_FLAGS", "Chromium", "find_chromium"]

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
]


def find_chromium() -> str | None:
    """``/usr/bin/chromium`` (Debian), else ``chromium``/``chromium-browser`` on PATH."""
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _high_fd(fd: int) -> int:
    """``fd`` moved to 10 or above (close-on-exec), so that placing the protocol pipe on fds 3
    and 4 in the child cannot overwrite it."""
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Chromium:
    """One headless browser with one page. Use as a context manager."""

    def __init__(
        self, executable: str | None = None, *, width: int = 1400, height: int = 900
    ) -> None:
        exe = executable or find_chromium()
        if exe is None:
            raise FileNotFoundError("chromium not found (apt-get install chromium)")
        self._profile = tempfile.TemporaryDirectory(prefix="ac-chromium-")
        to_child, self._write = map(_high_fd, os.pipe())
        self._read, from_child = map(_high_fd, os.pipe())

        def _fds() -> None:  # the protocol pipe is fd 3 (commands) and fd 4 (replies)
            os.dup2(to_child, 3)
            os.dup2(from_child, 4)

        self._proc = subprocess.Popen(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile.name}", "about:blank"],
            preexec_fn=_fds,
            close_fds=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(to_child)
        os.close(from_child)
        self._buf = b""
        self._id = 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        self.page("Page.enable")
        self.resize(width, height)

    # -- protocol --------------------------------------------------------------------------
    def _recv(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError("no reply from chromium")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise ConnectionError("chromium closed the protocol pipe")
            self._buf += chunk
        msg, _, self._buf = self._buf.partition(b"\0")
        return json.loads(msg)

    def call(self, method: str, *, _session: str | None = None, **params: Any) -> dict:
        """Send one protocol command and return its result (events are skipped)."""
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if _session:
            msg["sessionId"] = _session
        os.write(self._write, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._recv(60.0)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})

    def page(self, method: str, **params: Any) -> dict:
        """A command for the page's session."""
        return self.call(method, _session=self._session, **params)

    # -- actions ---------------------------------------------------------------------------
    def resize(self, width: int, height: int) -> None:
        self.page(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def open(self, url: str) -> None:
        self.page("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (promises awaited)."""
        res = self.page(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in res:
            raise RuntimeError(f"javascript error: {res['exceptionDetails'].get('text')}")
        return res.get("result", {}).get("value")

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for(self, expression: str, timeout: float = 30.0) -> bool:
        """Poll a JavaScript condition until it is truthy; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.evaluate(expression):
                    return True
            except RuntimeError:
                pass  # page still loading
            time.sleep(0.25)
        return False

    def wait_for_text(self, *texts: str, timeout: float = 30.0) -> bool:
        cond = " && ".join(f"document.body.innerText.includes({json.dumps(t)})" for t in texts)
        return self.wait_for(f"document.body && {cond}", timeout)

    def click(self, expression: str) -> bool:
        """Click the element a JavaScript expression returns; False if it returns nothing."""
        return bool(
            self.evaluate(
                f"(() => {{ const e = {expression}; if (!e) return false; "
                "e.scrollIntoView({block: 'center'}); e.click(); return true; })()"
            )
        )

    def hover(self, x: float, y: float) -> None:
        self.page("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)

    def screenshot(self, path: Path) -> Path:
        data = self.page("Page.captureScreenshot", format="png")["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def close(self) -> None:
        try:
            self.call("Browser.close")
            self._proc.wait(10)
        except Exception:  # noqa: BLE001 - already gone or hung: kill it below
            pass
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5)
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except OSError:
                pass
        self._profile.cleanup()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
