"""Headless Chromium, driven over the DevTools protocol on a pipe, to check what a person sees.

No Python dependency and no browser download: it runs the system's ``chromium`` (Debian's
package) with ``--remote-debugging-pipe`` (requests on fd 3, replies on fd 4, NUL-separated
JSON), so it can wait for text to appear, click, hover and take screenshots.

:func:`check_mlflow_ui` opens an MLflow UI on a finished search and checks that the experiment,
the trial runs (nested under the search's run) and the Pareto artifact are visible.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Chromium", "UiCheck", "check_mlflow_ui", "find_chromium", "pareto_hover_screenshot"]

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


@dataclass
class UiCheck:
    """What was checked in the MLflow UI, and the screenshots taken."""

    checks: dict[str, bool] = field(default_factory=dict)
    screenshots: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(self.checks.values())

    def describe(self) -> str:
        return "\n".join(f"  [{'ok' if v else 'FAIL'}] {k}" for k, v in self.checks.items())


_CLOSE_ASSISTANT = """Array.from(document.querySelectorAll('button[aria-label="Close"]')).find(
  b => { let p = b; for (let i = 0; i < 8 && p; i++) { p = p.parentElement;
    if (p && p.innerText && p.innerText.startsWith('MLflow Assistant')) return true; }
    return false; })"""


def _expander(run_name: str) -> str:
    """The expander button in the run-name cell of ``run_name``."""
    return (
        f"(() => {{ const a = Array.from(document.querySelectorAll('a')).find("
        f"a => a.innerText.trim() === {json.dumps(run_name)}); if (!a) return null; "
        "const cell = a.closest('.ag-cell') || a.parentElement; "
        "return cell.querySelector('button'); })()"
    )


def _artifact_node(name: str) -> str:
    """The clickable entry of artifact ``name`` in the run's artifact tree."""
    sel = json.dumps(f'[data-testid="artifact-tree-node"][artifact-name="{name}"]')
    return f"(document.querySelector({sel}) || {{}}).parentElement"


def check_mlflow_ui(
    browser: Chromium,
    base_url: str,
    *,
    experiment_id: str,
    experiment_name: str,
    parent_run_id: str,
    trial_names: list[str],
    out_dir: Path,
    timeout: float = 60.0,
) -> UiCheck:
    """Open the runs table, expand the search's run, then open its Pareto artifacts; record
    each check and save ``mlflow_runs.png``, ``mlflow_pareto.png`` (and
    ``mlflow_pareto_html.png``) in ``out_dir``."""
    from .ui import experiment_url

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    res = UiCheck()
    parent_name = f"search-{experiment_name}"
    browser.open(experiment_url(base_url, experiment_id))
    res.checks[f"experiment {experiment_name!r} and run {parent_name!r} listed"] = (
        browser.wait_for_text(experiment_name, parent_name, timeout=timeout)
    )
    browser.click(_CLOSE_ASSISTANT)
    shown = trial_names[: min(len(trial_names), 8)]
    expanded = browser.click(_expander(parent_name)) and browser.wait_for_text(
        *shown, timeout=timeout
    )
    res.checks[f"trial runs {', '.join(shown)} shown nested under {parent_name!r}"] = expanded
    time.sleep(0.5)
    res.screenshots.append(browser.screenshot(out_dir / "mlflow_runs.png"))

    base = f"{base_url}/#/experiments/{experiment_id}/runs/{parent_run_id}/artifacts/pareto"
    browser.open(f"{base}/pareto_front.png?workflowType=machine_learning")
    listed = browser.wait_for_text(
        "pareto_front.html", "pareto_front.png", "pareto_front.csv", timeout=timeout
    )
    res.checks["Pareto artifacts pareto/pareto_front.{csv,html,png} listed"] = listed
    img = (  # the viewer shows the fetched artifact as a blob: image
        "Array.from(document.images).some(i => (i.src.includes('pareto_front.png') || "
        "i.src.startsWith('blob:')) && i.complete && i.naturalWidth > 300)"
    )
    res.checks["Pareto plot image displayed"] = browser.wait_for(img, timeout)
    browser.click(_CLOSE_ASSISTANT)
    time.sleep(0.3)
    res.screenshots.append(browser.screenshot(out_dir / "mlflow_pareto.png"))

    browser.click(
        _artifact_node("pareto_front.html")
    )  # the viewer follows clicks, not hash changes
    frame = "document.querySelector('iframe.mlflow-html-iframe, iframe') !== null"
    res.checks["interactive Pareto plot (HTML) embedded"] = browser.wait_for(frame, timeout)
    time.sleep(2.0)  # plotly draws inside the frame
    browser.click(_CLOSE_ASSISTANT)
    res.screenshots.append(browser.screenshot(out_dir / "mlflow_pareto_html.png"))
    return res


def pareto_hover_screenshot(
    browser: Chromium, html_path: Path, png_path: Path, *, trial: int | None = None
) -> bool:
    """Open a ``pareto_front.html`` file, hover one Pareto point (``trial``'s, else the
    middle one) and save the screenshot with its tooltip; True if the tooltip names a trial."""
    browser.open(Path(html_path).resolve().as_uri())
    if not browser.wait_for("document.querySelectorAll('.scatterlayer .point').length > 0", 30):
        return False
    # trace order per panel: trials, Pareto; hover the first panel's Pareto trace
    head = json.dumps(f"<b>trial {trial if trial is not None else -1}<")
    pos = browser.evaluate(
        f"""(() => {{
        const gd = document.querySelector('.js-plotly-plot');
        const tr = gd.data.findIndex(t => t.name === 'Pareto');
        const texts = gd.data[tr].text;
        let i = texts.findIndex(t => t.startsWith({head}));
        if (i < 0) i = Math.floor(texts.length / 2);
        const traces = document.querySelectorAll('.scatterlayer .trace');
        const r = traces[tr].querySelectorAll('.point')[i].getBoundingClientRect();
        return [r.x + r.width / 2, r.y + r.height / 2];
    }})()"""
    )
    browser.hover(pos[0], pos[1])
    ok = browser.wait_for("document.querySelector('.hoverlayer .hovertext') !== null", 5)
    browser.screenshot(png_path)
    return ok
