"""A real browser opens a report: headless Chromium loads it with no console errors, and its screenshot shows the
plots.

Console errors are read over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages, each ending
in a NUL byte, on file descriptors 3 and 4), so the test needs no Python package beyond the standard library; the
screenshot comes from Chromium's own ``--screenshot`` flag. Chromium must be installed: the test fails, not skips,
without it.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

import lossfit
from lossfit.demo import run_demo
from lossfit.report import Report

INSTALL = "apt-get update && apt-get install -y --no-install-recommends chromium"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars", "--mute-audio")
TIMEOUT = 60.0
PLOT_BLUE = np.array([31, 119, 180])  # matplotlib's first line colour, "tab:blue"


def test_the_browser_version_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    """Chromium is Debian's package, outside the lock file: the run says which one it used."""
    done = subprocess.run([chromium(), "--version"], capture_output=True, text=True, timeout=TIMEOUT)
    version = done.stdout.strip()
    with capsys.disabled():
        print(f"\n[browser test] {version}")
    assert done.returncode == 0 and "chrom" in version.lower(), done.stderr[-500:]


def chromium() -> str:
    """The browser's path: $CHROMIUM, else the first of BROWSERS on PATH; a clear failure when there is none."""
    found = os.environ.get("CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)
    if not found:
        pytest.fail(
            f"headless Chromium is needed for the browser test and none of {', '.join(BROWSERS)} is on PATH; "
            f"install it with `{INSTALL}` (Debian) or point $CHROMIUM at a Chromium or Chrome binary",
            pytrace=False,
        )
    return found


class DevTools:
    """A browser driven over the DevTools protocol on a pipe: send commands, collect the events that arrive."""

    def __init__(self, browser: str, profile: Path) -> None:
        to_browser, self._commands = os.pipe()
        self._replies, from_browser = os.pipe()
        # The browser reads commands on fd 3 and writes replies on fd 4; bash (dash takes one-digit numbers only)
        # moves the pipe ends there, from numbers above 10 so that no end is overwritten on the way.
        to_browser, from_browser = (_above_ten(fd) for fd in (to_browser, from_browser))
        script = f'exec "$0" "$@" 3<&{to_browser} 4>&{from_browser} {to_browser}<&- {from_browser}>&-'
        command = ["bash", "-c", script, browser, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}"]
        self.process = subprocess.Popen(
            command, pass_fds=(to_browser, from_browser), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        os.close(to_browser)
        os.close(from_browser)
        self.events: list[dict[str, Any]] = []
        self._buffer = b""
        self._next_id = 0

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        """Send a command and wait for its result (events that arrive meanwhile are kept)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        reply = self._wait(lambda m: m.get("id") == self._next_id)
        if "error" in reply:
            raise RuntimeError(f"{method} failed: {reply['error']}")
        return dict(reply.get("result", {}))

    def wait_for_event(self, method: str, timeout: float = TIMEOUT) -> None:
        if not any(e["method"] == method for e in self.events):
            self._wait(lambda m: m.get("method") == method, timeout)

    def drain(self, seconds: float) -> None:
        """Collect events for a while (late console messages)."""
        with contextlib.suppress(TimeoutError):
            self._wait(lambda m: False, seconds)

    def _wait(self, wanted: Any, timeout: float = TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if wanted(message):
                    return dict(message)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from the browser within {timeout:g} s")
            if select.select([self._replies], [], [], left)[0]:
                chunk = os.read(self._replies, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"the browser closed the pipe (exit status {self.process.poll()})")
                self._buffer += chunk

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            self.send("Browser.close")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._commands)
        os.close(self._replies)


def _above_ten(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return moved


def console_errors(page: Path, profile: Path) -> list[str]:
    """Open ``page`` and return what the browser reported as errors: ``console.error`` and failed ``console.assert``
    calls, uncaught exceptions, and the browser's own error entries (a resource that failed to load)."""
    browser = DevTools(chromium(), profile)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        browser.wait_for_event("Page.loadEventFired")
        browser.drain(0.5)
    finally:
        browser.close()
    errors = []
    for event in browser.events:
        params = event.get("params", {})
        if event["method"] == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            errors.append("console." + params["type"] + ": " + " ".join(str(a.get("value")) for a in params["args"]))
        elif event["method"] == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            errors.append("exception: " + details.get("exception", {}).get("description", details["text"]))
        elif event["method"] == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            errors.append(f"{entry['source']}: {entry['text']} {entry.get('url', '')}".strip())
    return errors


def screenshot(page: Path, out: Path, profile: Path, size: tuple[int, int] = (1200, 2000)) -> np.ndarray:
    """A screenshot of ``page`` (1200x2000 by default) as an RGB array."""
    window = f"--window-size={size[0]},{size[1]}"
    command = [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}", window]
    done = subprocess.run(
        [*command, page.resolve().as_uri()], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert done.returncode == 0 and out.exists(), f"chromium --screenshot failed: {done.stderr[-2000:]}"
    with Image.open(out) as image:
        return np.asarray(image.convert("RGB"))


def demo_report(path: Path, with_figure: bool = True) -> Path:
    """A curve fit section with its figure and tables, written with the Report API."""
    x = torch.linspace(0, 4, 40, dtype=torch.float64)
    y = 2.5 * (1 - torch.exp(-1.3 * x)) + 0.02 * torch.sin(9 * x)
    fit = lossfit.curve_fit(lambda x, p: p[0] * (1 - torch.exp(-p[1] * x)), x, y, torch.ones(2, dtype=torch.float64))
    report = Report(title="lossfit browser check <script>alert(1)</script>")
    section = report.section("Curve fit", note="y = a (1 - exp(-b x))")
    if with_figure:
        section.result(fit)
    else:
        section.status(success=fit.success, status=fit.status, message=fit.message)
        section.table([{"parameter": f"p[{i}]", "value": v} for i, v in enumerate(fit.params.tolist())])
    section.code("lossfit fit data.csv --model 'a * (1 - exp(-b * x))'")
    return report.save(path)


def plot_pixels(image: np.ndarray) -> int:
    """Pixels within a small distance of matplotlib's first line colour."""
    return int((np.abs(image.astype(int) - PLOT_BLUE).sum(axis=-1) < 30).sum())


def test_report_loads_without_console_errors(tmp_path: Path) -> None:
    page = demo_report(tmp_path / "report.html")
    assert console_errors(page, tmp_path / "profile") == []


def test_console_errors_are_detected(tmp_path: Path) -> None:
    """The detector is not blind: a deliberately broken page reports each kind of error."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>broken</title></head><body><p>broken</p>'
        '<img src="missing.png" alt="missing">'
        '<script>console.log("only a log"); console.error("deliberate error"); undefinedFunction();</script>'
        "</body></html>",
        encoding="utf-8",
    )
    errors = console_errors(page, tmp_path / "profile")
    assert any(e == "console.error: deliberate error" for e in errors), errors
    assert any(e.startswith("exception: ReferenceError: undefinedFunction is not defined") for e in errors), errors
    assert any("missing.png" in e for e in errors), errors
    assert not any("only a log" in e for e in errors)


def assert_shows_plots(image: np.ndarray) -> None:
    """Not a blank page: enough ink, enough colours, and matplotlib's first line colour where the plots are."""
    non_white = float((image.min(axis=-1) < 245).mean())
    colours = len(np.unique(image.reshape(-1, 3), axis=0))
    assert non_white > 0.015, f"only {non_white:.2%} of the page is not white: is it blank?"
    assert colours > 300, f"only {colours} distinct colours: is the page blank?"
    assert plot_pixels(image) > 300, "the loss curve's line is not visible in the screenshot"


def test_screenshot_shows_the_plots(tmp_path: Path) -> None:
    page = demo_report(tmp_path / "report.html")
    image = screenshot(page, tmp_path / "shot.png", tmp_path / "profile")
    assert image.shape == (2000, 1200, 3)
    assert_shows_plots(image)

    # The measure tells the plot apart: the same report without its figure (text and tables only) has none.
    plain = demo_report(tmp_path / "plain.html", with_figure=False)
    assert plot_pixels(screenshot(plain, tmp_path / "plain.png", tmp_path / "profile-plain")) < 50


@pytest.mark.usefixtures("one_thread")
def test_the_demo_report_opens_in_the_browser_and_shows_its_plots(tmp_path: Path) -> None:
    """``lossfit demo``'s own report: no console errors, and every part's plots on screen (not a blank page)."""
    printed = io.StringIO()
    demo = run_demo(tmp_path / "demo", Console(file=printed, width=120))
    page = demo.files["report"]
    assert page == tmp_path / "demo" / "report.html" and demo.success
    summary = printed.getvalue()
    assert "lossfit demo:" in summary and "CT registration" in summary and "wrote report:" in summary

    assert console_errors(page, tmp_path / "profile") == []
    image = screenshot(page, tmp_path / "shot.png", tmp_path / "profile-shot", size=(1200, 12_000))
    top = image[:2000]  # what a reader sees first: the summary and the inverse-by-SGD plot
    assert_shows_plots(top)
    # Further down, the CT slices of the before/after figure: a block of grey pixels that text cannot make.
    assert grey_block(image[2000:]) > 0.6, "the registration's before/after images are not visible"


def grey_block(image: np.ndarray, size: int = 120) -> float:
    """The largest share of grey pixels (R = G = B, neither white nor black) in any ``size`` x ``size`` square:
    near 1 over a photograph such as a CT slice, low over text and line plots."""
    rgb = image.astype(int)
    grey = (np.ptp(rgb, axis=-1) < 4) & (rgb[..., 0] > 30) & (rgb[..., 0] < 235)
    total = np.pad(grey.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    window = total[size:, size:] - total[:-size, size:] - total[size:, :-size] + total[:-size, :-size]
    return float(window.max()) / size**2 if window.size else 0.0
