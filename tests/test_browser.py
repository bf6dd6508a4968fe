"""Once in a real browser: start the Streamlit server, load pages in headless Chromium, and check
the rendered page (DOM text) and a screenshot. Skipped only when Chromium is not installed
(``apt-get install -y chromium``)."""
from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_dashboard_app import make_run

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
ANP_RUN = "20260101-000000-anp-cnn_badnets-aaaa"
CLP_RUN = "20260101-000001-clp-cnn_badnets-bbbb"
ARROW_LEFT, ARROW_RIGHT = "\ue012", "\ue014"
# Installed in the page: the time of the next key press, and of the next change of the metrics'
# text after it, both from the page's own clock (no WebDriver round trip in the measurement).
WATCH_METRICS = """
const values = () => [...document.querySelectorAll('[data-testid="stMetricValue"]')].map(e => e.innerText).join('|');
window.__before = values(); window.__pressed = null; window.__changed = null;
document.addEventListener('keydown', () => { if (window.__pressed === null) window.__pressed = performance.now(); },
                          {capture: true, once: true});
new MutationObserver((_, obs) => {
  if (window.__pressed !== null && values() !== window.__before) { window.__changed = performance.now(); obs.disconnect(); }
}).observe(document.body, {subtree: true, childList: true, characterData: true});
"""
CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or "")
                 if p and os.path.exists(p)), None)

CHROMEDRIVER = shutil.which("chromedriver") if CHROMIUM else None
# Screenshots land here so a person can look at them (tmp by default; set PRUNESCOPE_SHOTS to keep them).
SHOTS = Path(os.environ.get("PRUNESCOPE_SHOTS") or os.environ.get("TMPDIR", "/tmp"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium); the browser check needs it.")
    runs = tmp_path_factory.mktemp("runs")
    make_run(runs, ANP_RUN)
    make_run(runs, CLP_RUN, defense="clp", suspicious="high", triggers=False)
    port = free_port()
    log = open(runs / "server.log", "wb")
    env = dict(os.environ, PRUNESCOPE_RUNS=str(runs))
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard" / "app.py"),
                             "--server.port", str(port), "--server.headless", "true",
                             "--browser.gatherUsageStats", "false"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server did not start: {(runs / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield {"url": url, "runs": runs, "started": started}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


class Browser:
    """Headless Chromium driven through chromedriver's W3C WebDriver HTTP API (no extra package),
    so the test can wait, in real time, for what a Streamlit page draws after its websocket runs."""

    def __init__(self, tmp: Path):
        self.port = free_port()
        self.driver = subprocess.Popen([CHROMEDRIVER, f"--port={self.port}"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                self._call("GET", "/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--user-data-dir={tmp / 'profile'}", "--window-size=1400,1000"]
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM, "args": args}}}}
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())["value"]

    def open(self, url: str) -> None:
        self._call("POST", f"/session/{self.session}/url", {"url": url})

    def text(self) -> str:
        return self._call("POST", f"/session/{self.session}/execute/sync",
                          {"script": "return document.body.innerText + document.title;", "args": []})

    def wait_for(self, text: str, timeout: float = 180) -> str:
        deadline, seen = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            seen = self.text()
            if text in seen:
                return seen
            time.sleep(0.5)
        return seen

    def run_js(self, script: str):
        return self._call("POST", f"/session/{self.session}/execute/sync", {"script": script, "args": []})

    def press(self, css: str, key: str) -> None:
        """Focus the element and press a key, as a user's keyboard would (the slider's range input
        is visually hidden, so WebDriver's element commands refuse it)."""
        self.run_js(f"document.querySelector({json.dumps(css)}).focus();")
        self._call("POST", f"/session/{self.session}/actions", {"actions": [{
            "type": "key", "id": "keyboard", "actions": [{"type": "keyDown", "value": key},
                                                         {"type": "keyUp", "value": key}]}]})

    def width(self, px: int, height: int = 1000) -> None:
        self._call("POST", f"/session/{self.session}/window/rect", {"width": px, "height": height})

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self._call("GET", f"/session/{self.session}/screenshot")))

    def close(self) -> None:
        try:
            self._call("DELETE", f"/session/{self.session}")
        finally:
            self.driver.terminate()
            self.driver.wait(10)


@pytest.fixture
def browser(tmp_path):
    if CHROMEDRIVER is None:
        pytest.skip("chromedriver is not installed (apt-get install -y chromium-driver); the browser check needs it.")
    b = Browser(tmp_path)
    try:
        yield b
    finally:
        b.close()


def test_model_page_renders_in_chromium(server, browser, tmp_path):
    browser.open(server["url"])
    text = browser.wait_for("Clean accuracy")
    first_chart = time.perf_counter() - server["started"]
    assert "prunescope" in text  # the page title and the sidebar
    assert "Model" in text and "Sample model" in text
    assert "Clean accuracy" in text  # the baseline was computed and shown
    shot = SHOTS / "model.png"
    browser.screenshot(shot)
    assert shot.stat().st_size > 20_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"\nserver start to the Model page with its metrics and chart (Chromium): {first_chart:.1f} s")


def test_explore_page_screenshot(server, browser, tmp_path):
    browser.open(f"{server['url']}/explore?run={ANP_RUN}")
    text = browser.wait_for("ACC after pruning")
    time.sleep(2)  # let the Plotly charts draw before the picture is taken
    shot = SHOTS / "explore.png"
    browser.screenshot(shot)
    assert "Explore a finished run" in text, text
    assert "Runs folder" in text, "a deep link must run through the entry point (its sidebar), not the page alone"
    assert "ACC after pruning" in text and "BN CNN + BadNets · anp" in text, text
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


SLIDER = '[data-testid="stSlider"] input[type="range"]'


def shown(browser) -> tuple[str, list[str]]:
    """The slider's label for its value, and the metrics' values under it."""
    thumb = browser.run_js("return [...document.querySelectorAll('[data-testid=\"stSliderThumbValue\"]')]"
                           ".map(e => e.innerText)[0] || ''")
    return thumb, browser.run_js("return [...document.querySelectorAll('[data-testid=\"stMetricValue\"]')]"
                                 ".map(e => e.innerText)")


def wait_shown(browser, thumb: str, timeout: float = 60) -> tuple[str, list[str]]:
    """Wait for the slider's label to start with ``thumb`` and the metrics under it (a prefix, so that
    a caller can wait for a threshold without knowing its count; the callers assert the rest)."""
    deadline, seen = time.monotonic() + timeout, ("", [])
    while time.monotonic() < deadline:
        seen = shown(browser)
        if seen[0].startswith(thumb) and len(seen[1]) >= 3:
            return seen
        time.sleep(0.2)
    return seen


def slider_step(browser, key: str, timeout: float = 30) -> float:
    """Seconds from a key press on the threshold slider to the metrics' new text, by the page's clock."""
    browser.run_js(WATCH_METRICS)
    browser.press(SLIDER, key)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pressed, changed = browser.run_js("return [window.__pressed, window.__changed]")
        if changed is not None:
            return (changed - pressed) / 1000
        time.sleep(0.02)
    raise AssertionError("the metrics did not change after a slider step")


def test_reload_keeps_the_slider_and_the_metrics_together(server, browser):
    browser.open(f"{server['url']}/explore?run={ANP_RUN}&t=0.05")
    thumb, metrics = wait_shown(browser, "0.05 · 1 pruned")
    assert thumb == "0.05 · 1 pruned" and "1 / 320" in metrics, (thumb, metrics)
    slider_step(browser, ARROW_RIGHT)
    deadline = time.monotonic() + 30
    while "t=0.1" not in browser.run_js("return window.location.href") and time.monotonic() < deadline:
        time.sleep(0.2)
    url = browser.run_js("return window.location.href")
    assert f"run={ANP_RUN}" in url and "t=0.1" in url, url
    browser.open(url)  # the reload
    thumb, metrics = wait_shown(browser, "0.1 · 2 pruned")
    assert thumb == "0.1 · 2 pruned" and "2 / 320" in metrics, (thumb, metrics)
    browser.open(f"{server['url']}/explore?run={CLP_RUN}")  # another run opens at its own cut (u = 3)
    thumb, metrics = wait_shown(browser, "3 · ")
    assert thumb.startswith("3 · ") and f"{thumb.split('· ')[1].split()[0]} / 320" in metrics, (thumb, metrics)


def test_slider_step_time_idle_and_with_a_run_going(server, browser):
    """Measured, not asserted (these machines are noisy): the note quotes the medians."""
    from defenses.runs.folder import RunRequest, cancel_run, read_status, start_run

    browser.open(f"{server['url']}/explore?run={ANP_RUN}&t=0.05")
    wait_shown(browser, "0.05 · 1 pruned")
    idle = sorted(slider_step(browser, ARROW_RIGHT if i % 2 == 0 else ARROW_LEFT) for i in range(6))
    run_dir = start_run(RunRequest(defense="anp", params={"iterations": 100000}, model={"sample": "cnn_badnets"},
                                   data={"dataset": "mnist5k", "clean_count": 500, "seed": 0},
                                   recover_triggers=False), server["runs"])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (read_status(run_dir).get("progress") or {}).get("stage") != "anp":
            time.sleep(0.5)
        assert read_status(run_dir).get("state") == "running", read_status(run_dir)
        busy = sorted(slider_step(browser, ARROW_RIGHT if i % 2 == 0 else ARROW_LEFT) for i in range(6))
    finally:
        cancel_run(run_dir)
    print(f"\nslider step to updated metrics (Chromium), median of 6: idle {1000 * idle[3]:.0f} ms, "
          f"with an ANP run going {1000 * busy[3]:.0f} ms (all: {[round(1000 * x) for x in idle]} / "
          f"{[round(1000 * x) for x in busy]})")


PAGES = {"": "Clean accuracy", "defend": "Hyperparameters", f"explore?run={ANP_RUN}": "ACC after pruning",
         f"neuron?run={ANP_RUN}&layer=features.8&index=3": "Rank overall", "compare": "Compare defenses", "triggers": "Recovered triggers", "learn": "When pruning works"}


@pytest.mark.parametrize("width", [1400, 1000])
def test_every_page_at_both_widths(server, browser, width):
    """Each page draws without an error at a wide and a narrow window; the pictures are kept in
    PRUNESCOPE_SHOTS for a person to look at (overlaps and truncation are judged by eye)."""
    browser.width(width, 2400)  # tall: the picture holds the whole page, charts included
    for page, marker in PAGES.items():
        browser.open(f"{server['url']}/{page}")
        text = browser.wait_for(marker, 120)
        assert marker in text, (page, text[-500:])
        assert "Traceback" not in text, (page, text[-800:])
        time.sleep(2)  # the Plotly charts draw after the text
        browser.screenshot(SHOTS / f"{page.split('?')[0] or 'model'}-{width}.png")
