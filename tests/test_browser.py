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
    make_run(runs, "20260101-000000-anp-cnn_badnets-aaaa")
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
    browser.open(f"{server['url']}/explore")
    text = browser.wait_for("ACC after pruning")
    time.sleep(2)  # let the Plotly charts draw before the picture is taken
    shot = SHOTS / "explore.png"
    browser.screenshot(shot)
    assert "Explore a finished run" in text, text
    assert "Runs folder" in text, "a deep link must run through the entry point (its sidebar), not the page alone"
    assert "ACC after pruning" in text and "BN CNN + BadNets · anp" in text, text
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
