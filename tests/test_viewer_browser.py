"""The attention viewer in a real browser: JupyterLab on 127.0.0.1 driven by headless Chromium.

Runs ``tests/assets/viewer_browser.ipynb`` (a copy, so the committed file is never touched), moves the
slice slider with the keyboard and checks that the rendered panel changes. Needs Debian's ``chromium``
(``make browser``) and PyPI's ``playwright`` pointed at it — never ``playwright install``.
"""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
NOTEBOOK = Path(__file__).parent / "assets" / "viewer_browser.ipynb"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _wait_until(condition, failure, timeout: float = 15.0) -> None:
    """Poll ``condition`` every 0.2 s; fail with ``failure`` (a text, or a callable giving one) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, failure() if callable(failure) else failure
        time.sleep(0.2)


pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                       reason=f"{CHROMIUM} not installed (Debian's chromium package; run `make browser`)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, token: str, path: str, method: str = "GET"):
    request = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        body = response.read()
        return json.loads(body) if body else None


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on 127.0.0.1 serving a copy of the notebook; shut down (kernels included)."""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    cmd = [sys.executable, "-m", "jupyter", "lab", "--ip=127.0.0.1", f"--port={port}", "--no-browser",
           "--ServerApp.open_browser=False", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}", "--ServerApp.port_retries=0",
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(tmp_path / "jupyter.log", "wb")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 40
        while True:
            try:
                api(base, token, "/api/status")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start:\n{(tmp_path / 'jupyter.log').read_text()[-3000:]}")
                time.sleep(0.3)
        yield base, token
    finally:
        try:  # a clean shutdown also stops the kernels the server started
            api(base, token, "/api/shutdown", method="POST")
            server.wait(timeout=15)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def test_slider_moves_the_image_in_jupyterlab(jupyterlab):
    sync_api = pytest.importorskip("playwright.sync_api", reason="PyPI's playwright is not installed")
    base, token = jupyterlab
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}")
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=30_000)
            page.get_by_text("| Idle").wait_for(timeout=30_000)  # kernel up: Run All would otherwise ask for one
            page.get_by_role("menuitem", name="Run").click()
            page.get_by_text("Run All Cells", exact=True).click()

            panel = page.locator("img.fmct-panel").first
            panel.wait_for(timeout=45_000)
            readout = page.locator(".fmct-slice .widget-readout")
            start = int(readout.inner_text())
            before = panel.screenshot()

            handle = page.locator(".fmct-slice .noUi-handle")
            handle.focus()
            for _ in range(3):
                handle.press("ArrowRight")
            page.wait_for_function(
                "([sel, v]) => document.querySelector(sel).innerText.trim() === String(v)",
                arg=[".fmct-slice .widget-readout", start + 3], timeout=10_000)
            # the kernel re-renders and sends the new PNG
            _wait_until(lambda: panel.screenshot() != before, "the image did not change after moving the slider")
            # the caption follows the last of the three renders, which may land after the first new image
            caption = page.locator(".widget-html-content").last
            _wait_until(lambda: f"slice {start + 3}/" in caption.inner_text(),
                        lambda: f"caption still says {caption.inner_text()!r}")
        finally:
            browser.close()
