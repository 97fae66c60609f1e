"""The HTML report opened in a real headless browser (Debian's `chromium`), with no network:
the report of a real run against a profiled baseline renders its charts and drift table,
with no console error, no failed load and no request leaving the machine.

The browser is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`),
with no library, driver or port: the protocol reports what the browser's log does not,
each request the page makes and each load that failed, as events to check. The checker is
itself tested on pages that break each rule.

A screenshot of the whole page is kept, as `report_browser.png`, in the folder named by
BATCHPREDICT_TEST_ARTIFACTS (default: `test-artifacts/` at the repository root, which git
ignores). Without a chromium binary (`.ci/run` installs it where apt-get works) the tests
skip and say so.
"""

from __future__ import annotations

import base64
import io
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import N_FEATURES, make_frame, write_with_library

pytest.importorskip("matplotlib")
# Pillow is matplotlib's own dependency: there whenever the report can be made.
from PIL import Image

pytestmark = pytest.mark.slow  # each test runs a browser process

FEATURES = ",".join(f"f{j}" for j in range(N_FEATURES))
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
REPO = Path(__file__).resolve().parent.parent
#: The colour of a run's line in the report's charts (html_report._STYLES).
RUN_COLOUR = (0x1F, 0x77, 0xB4)
TIMEOUT = 60.0


def chromium() -> str:
    """The headless browser to use, skipping the test when there is none."""
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium binary (.ci/run installs Debian's `chromium` where apt-get works)")


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("BATCHPREDICT_TEST_ARTIFACTS") or REPO / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --- the DevTools protocol over a pipe ---------------------------------------------------


class DevTools:
    """A headless chromium and its DevTools protocol on fds 3 (commands in) and 4 (replies
    and events out), each message JSON ending in a NUL byte. Every event received is kept
    in `events`, in order."""

    def __init__(self, binary: str, profile: Path, log: Path) -> None:
        self._log = log
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()
        flags = [
            "--headless",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            # No network: every request goes to a proxy that is not there (the discard port
            # on this machine), and no name resolves.
            "--proxy-server=127.0.0.1:9",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1280,900",
            "--force-device-scale-factor=1",
        ]
        if os.geteuid() == 0:
            flags.append("--no-sandbox")  # chromium's sandbox refuses to run as root
        # The shell puts the pipe ends where the protocol wants them, fds 3 and 4.
        script = 'exec "$@" 3<&0 4>&1 0</dev/null 1>&2'
        with log.open("wb") as stderr:
            self.process = subprocess.Popen(
                ["sh", "-c", script, "sh", binary, *flags, "about:blank"],
                stdin=commands_read,
                stdout=replies_write,
                stderr=stderr,
            )
        os.close(commands_read)
        os.close(replies_write)
        self.events: list[dict[str, Any]] = []
        self._buffer = b""
        self._next_id = 0

    def send(
        self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None
    ) -> Any:
        """Run one protocol command (in `session` when given) and return its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        reply = self._receive(lambda m: m.get("id") == self._next_id, method)
        if "error" in reply:
            raise AssertionError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_for(self, event: str, session: str) -> dict[str, Any]:
        """The first event named `event` in `session` (received already or next)."""

        def wanted(message: dict[str, Any]) -> bool:
            return message.get("method") == event and message.get("sessionId") == session

        for seen in self.events:
            if wanted(seen):
                return seen
        return self._receive(wanted, event)

    def _receive(self, wanted: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if wanted(message):
                    return dict(message)
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._replies], [], [], left)[0]:
                raise AssertionError(f"no answer in {TIMEOUT:.0f} s to {what}{self._log_tail()}")
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                raise AssertionError(f"the browser closed its pipe at {what}{self._log_tail()}")
            self._buffer += chunk

    def _log_tail(self) -> str:
        """The end of the browser's stderr, to say why it did not answer."""
        lines = self._log.read_text(errors="replace").splitlines()[-15:]
        return "; the browser's stderr ends:\n" + "\n".join(lines) if lines else ""

    def close(self) -> None:
        try:
            os.write(self._commands, json.dumps({"id": 0, "method": "Browser.close"}).encode())
            os.write(self._commands, b"\0")
        except OSError:
            pass  # already gone
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._commands)
        os.close(self._replies)


@contextmanager
def browser(tmp_path: Path) -> Iterator[DevTools]:
    devtools = DevTools(chromium(), tmp_path / "profile", tmp_path / "chromium.log")
    try:
        yield devtools
    finally:
        devtools.close()


# --- a page rendered, and what went wrong on it -------------------------------------------


@dataclass
class Rendered:
    problems: list[str]  # console errors, exceptions, failed loads, requests off the machine
    screenshot: bytes  # PNG of the whole page
    devtools: DevTools
    session: str

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression on the rendered page."""
        params = {"expression": expression, "returnByValue": True}
        result = self.devtools.send("Runtime.evaluate", params, session=self.session)
        return result["result"].get("value")

    def clip(self, box: dict[str, float]) -> Image.Image:
        """A screenshot of one region of the page (CSS pixels from the page's top left)."""
        params = {"format": "png", "captureBeyondViewport": True, "clip": {**box, "scale": 1}}
        shot = self.devtools.send("Page.captureScreenshot", params, session=self.session)
        return Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")


def render(devtools: DevTools, page: Path) -> Rendered:
    """Open `page` in a new tab, wait for its load event (which waits for every image and
    style sheet) and take a screenshot of all of it."""
    target = devtools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    attached = devtools.send("Target.attachToTarget", {"targetId": target, "flatten": True})
    session = attached["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        devtools.send(f"{domain}.enable", session=session)
    navigated = devtools.send("Page.navigate", {"url": page.as_uri()}, session=session)
    devtools.wait_for("Page.loadEventFired", session)
    size = devtools.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
    box = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    params = {"format": "png", "captureBeyondViewport": True, "clip": box}
    shot = devtools.send("Page.captureScreenshot", params, session=session)
    problems = problems_in(devtools.events)
    if navigated.get("errorText"):
        problems.insert(0, f"navigation failed: {navigated['errorText']}")
    return Rendered(problems, base64.b64decode(shot["data"]), devtools, session)


def problems_in(events: list[dict[str, Any]]) -> list[str]:
    """What a reader of the page would see go wrong, one line each, from protocol events."""
    problems = []
    urls: dict[str, str] = {}
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            urls[params["requestId"]] = url
            if url.split(":", 1)[0] not in ("file", "data", "about"):
                problems.append(f"request off the machine: {url}")
        elif method == "Network.loadingFailed":
            url = urls.get(params["requestId"], "?")
            problems.append(f"failed to load {url}: {params.get('errorText')}")
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            problems.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            problems.append(f"uncaught exception: {text}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            problems.append(f"{entry['source']} error: {entry['text']} {entry.get('url', '')}")
    return problems


# --- the checker, on pages that break its rules -------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('<img src="http://example.invalid/x.png" alt="">', "example.invalid/x.png"),
        ('<link rel="stylesheet" href="https://example.invalid/s.css">', "example.invalid/s.css"),
        ("<script>console.error('deliberate console error')</script>", "deliberate console"),
        ("<script>throw new Error('deliberate exception')</script>", "deliberate exception"),
        ('<img src="missing-here.png" alt="">', "missing-here.png"),
    ],
    ids=["remote-image", "remote-stylesheet", "console-error", "exception", "missing-file"],
)
def test_the_checker_catches_a_page_that_breaks_a_rule(
    tmp_path: Path, body: str, expected: str
) -> None:
    page = tmp_path / "broken.html"
    page.write_text(f"<!DOCTYPE html><html><body><p>text</p>{body}</body></html>")
    with browser(tmp_path) as devtools:
        problems = render(devtools, page).problems
    assert any(expected in problem for problem in problems), problems


def test_the_checker_passes_a_clean_page(tmp_path: Path) -> None:
    page = tmp_path / "clean.html"
    svg = "<svg width='20' height='20'><rect width='20' height='20'/></svg>"
    page.write_text(f"<!DOCTYPE html><html><body><p>text</p>{svg}</body></html>")
    with browser(tmp_path) as devtools:
        rendered = render(devtools, page)
        assert rendered.problems == []
        assert rendered.evaluate("document.querySelectorAll('svg').length") == 1


# --- the report of a real run ---------------------------------------------------------------


def real_report(run_main: Callable[..., Any], model: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A baseline profiled from reference data, a run against it on a day whose f1 moved
    (past --max_drift: exit 3, its stats written) and that run's report against the
    baseline. Returns the report and the run's stats file."""
    reference = write_with_library(make_frame(5_000, seed=4), tmp_path / "train.csv", "csv")
    base = tmp_path / "base.json"
    profiled = run_main(
        "profile", "--model", str(model), "--input_file", str(reference),
        "--features", FEATURES, "--stats_file", str(base),
    )  # fmt: skip
    assert profiled.returncode == 0, profiled.stderr
    day = make_frame(5_000, seed=11)
    day["f1"] += 1.5
    data = write_with_library(day, tmp_path / "day.parquet", "parquet")
    run_stats = tmp_path / "run.json"
    predicted = run_main(
        "predict", "--model", str(model), "--input_file", str(data), "--features", FEATURES,
        "--output_file", str(tmp_path / "scored.parquet"), "--baseline", str(base),
        "--stats_file", str(run_stats), "--max_drift", "0.25",
    )  # fmt: skip
    assert predicted.returncode == 3, predicted.stderr
    page = tmp_path / "report.html"
    reported = run_main("report", str(run_stats), "--baseline", str(base), "--output", str(page))
    assert reported.returncode == 0, reported.stderr
    return page, run_stats


def test_the_report_of_a_real_run_renders_offline_with_its_charts(
    run_main: Callable[..., Any], mlp_model: Path, tmp_path: Path
) -> None:
    chromium()  # skip before the run when there is no browser
    page, run_stats = real_report(run_main, mlp_model, tmp_path)
    stats = json.loads(run_stats.read_text())
    with browser(tmp_path) as devtools:
        rendered = render(devtools, page)
        shot = artifacts_dir() / "report_browser.png"
        shot.write_bytes(rendered.screenshot)
        assert rendered.problems == [], rendered.problems
        check_charts(rendered, stats)
        check_drift_table(rendered, stats)
        check_sparklines(rendered, stats)
        check_fits(rendered)
    assert_not_blank(Image.open(shot).convert("L"), f"the screenshot {shot}")


def check_charts(rendered: Rendered, stats: dict[str, Any]) -> None:
    """One chart per numeric prediction column, each laid out at a size and drawn: its
    region of the screenshot holds ink, some of it the run's line colour."""
    numeric = [c["name"] for c in stats["predictions"] if c["kind"] == "numeric"]
    assert numeric, "the run has no numeric prediction column to chart"
    boxes = rendered.evaluate(
        "[...document.querySelectorAll('figure > svg')].map(s => {"
        " const r = s.getBoundingClientRect();"
        " return {x: r.x + scrollX, y: r.y + scrollY, width: r.width, height: r.height}; })"
    )
    assert len(boxes) == len(numeric), (boxes, numeric)
    for box in boxes:
        assert box["width"] > 200 and box["height"] > 100, box
        chart = rendered.clip(box)
        assert_not_blank(chart.convert("L"), f"the chart at {box}")
        colours = {colour for _, colour in chart.getcolors(chart.width * chart.height) or []}
        assert any(_near(colour, RUN_COLOUR) for colour in colours), "no run line drawn"


def check_drift_table(rendered: Rendered, stats: dict[str, Any]) -> None:
    """The drift table's rows are the run's drift columns, highest PSI first, the one over
    --max_drift marked."""
    rows = rendered.evaluate(
        "[...document.querySelectorAll('table.drift tr')].filter(r => r.querySelector('td'))"
        ".map(r => [r.cells[0].textContent, r.className])"
    )
    by_psi = sorted(stats["drift"]["columns"], key=lambda c: -c["psi"])
    assert [name for name, _ in rows] == [c["name"] for c in by_psi]
    marked = [name for name, mark in rows if mark == "exceeded"]
    assert marked == stats["drift"]["exceeded"] == ["f1"]


def check_sparklines(rendered: Rendered, stats: dict[str, Any]) -> None:
    """A small histogram for each numeric column, features and predictions, laid out."""
    columns = [
        c
        for c in stats["features"] + stats["predictions"]
        if c["kind"] == "numeric" and any(c["histogram"]["counts"])
    ]
    sizes = rendered.evaluate(
        "[...document.querySelectorAll('svg.spark')].map(s => s.getBoundingClientRect().width)"
    )
    assert len(sizes) == len(columns) and all(width > 0 for width in sizes), sizes


def check_fits(rendered: Rendered) -> None:
    """The page fits the window, wide or narrow: it never scrolls sideways (a table wider
    than the window scrolls in its own box)."""
    overflow = "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    for width in (1280, 700):
        metrics = {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}
        rendered.devtools.send(
            "Emulation.setDeviceMetricsOverride", metrics, session=rendered.session
        )
        extra = rendered.evaluate(overflow)
        assert extra <= 0, f"the page is {extra} px wider than a {width} px window"


def assert_not_blank(image: Image.Image, what: str) -> None:
    """Some pixels are not the background: at least 1% of them, and not one flat tone."""
    histogram = image.histogram()
    background = max(range(256), key=lambda tone: histogram[tone])
    inked = sum(histogram) - histogram[background]
    assert inked >= 0.01 * sum(histogram), f"{what} is blank ({inked} pixels of ink)"


def _near(colour: Any, target: tuple[int, int, int], slack: int = 24) -> bool:
    return all(abs(int(c) - t) <= slack for c, t in zip(colour, target, strict=True))
