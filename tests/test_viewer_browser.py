"""The attention viewer in a real browser: JupyterLab on 127.0.0.1 driven by headless Chromium.

Two notebooks, each a copy (the committed files are never touched): ``tests/assets/viewer_browser.ipynb``
(the viewer alone on a toy phantom), and the real ``notebooks/07_attention.ipynb`` with its parameters
injected by papermill (toy profile, a small synthetic cohort, a toy encoder checkpoint), run from top to
bottom. Each moves the slice slider with the keyboard and checks that the rendered panel changes. Needs
Debian's ``chromium`` (``make browser``) and PyPI's ``playwright`` pointed at it — never ``playwright install``.
"""
import contextlib
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
REPO = Path(__file__).resolve().parents[1]
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
    pytest.mark.timeout(420),
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


@contextlib.contextmanager
def jupyterlab(root: Path, scratch: Path):
    """A JupyterLab server on 127.0.0.1 serving ``root`` (its kernels inherit this process's environment);
    yields (base URL, token); shut down, kernels included."""
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(scratch / "config"), JUPYTER_RUNTIME_DIR=str(scratch / "runtime"))
    # render every cell, not only those in view (JupyterLab 4 draws a long notebook's cells as they scroll in)
    settings = scratch / "config" / "lab" / "user-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    cmd = [sys.executable, "-m", "jupyter", "lab", "--ip=127.0.0.1", f"--port={port}", "--no-browser",
           "--ServerApp.open_browser=False", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           f"--LabApp.workspaces_dir={scratch / 'workspaces'}", "--ServerApp.port_retries=0",
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(scratch / "jupyter.log", "wb")
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
                    raise RuntimeError(f"JupyterLab did not start:\n{(scratch / 'jupyter.log').read_text()[-3000:]}")
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


@contextlib.contextmanager
def notebook_page(base: str, token: str, name: str, scratch: Path):
    """Headless Chromium on notebook ``name``, its cells run with Run All; yields the page. On a failure the
    whole page is saved as ``scratch/failed_<name>.png``."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="PyPI's playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/lab/tree/{name}?token={token}")
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=30_000)
            page.get_by_text("| Idle").wait_for(timeout=30_000)  # kernel up: Run All would otherwise ask for one
            page.get_by_role("menuitem", name="Run").click()
            page.get_by_text("Run All Cells", exact=True).click()
            try:
                yield page
            except BaseException:
                page.screenshot(path=str(scratch / f"failed_{name}.png"), full_page=True)
                raise
        finally:
            browser.close()


def move_slider_and_check_the_image(page, steps: int = 3) -> None:
    """Move the first viewer's slice slider ``steps`` slices with the keyboard (towards the side with room):
    the readout follows, the kernel sends a new PNG, the caption names the new slice."""
    panel = page.locator("img.fmct-panel").first
    panel.wait_for(timeout=45_000)
    readout = page.locator(".fmct-slice .widget-readout").first
    start = int(readout.inner_text())
    target, key = (start - steps, "ArrowLeft") if start >= steps else (start + steps, "ArrowRight")
    before = panel.screenshot()
    handle = page.locator(".fmct-slice .noUi-handle").first
    handle.focus()
    for _ in range(steps):
        handle.press(key)
    page.wait_for_function(
        "([sel, v]) => document.querySelector(sel).innerText.trim() === String(v)",
        arg=[".fmct-slice .widget-readout", target], timeout=10_000)
    # the kernel re-renders and sends the new PNG
    _wait_until(lambda: panel.screenshot() != before, "the image did not change after moving the slider")
    # the caption follows the last of the renders, which may land after the first new image
    caption = page.locator(".widget-html-content").last
    _wait_until(lambda: f"slice {target}/" in caption.inner_text(),
                lambda: f"caption still says {caption.inner_text()!r}")


def test_slider_moves_the_image_in_jupyterlab(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    with jupyterlab(root, tmp_path) as (base, token), notebook_page(base, token, NOTEBOOK.name, tmp_path) as page:
        move_slider_and_check_the_image(page)
        assert page.locator("img.fmct-colour-bar").first.is_visible()


@pytest.fixture
def attention_notebook(tmp_path, monkeypatch):
    """``notebooks/07_attention.ipynb`` with papermill's parameters cell (toy profile, a toy encoder checkpoint, a
    scan with a lesion) in a JupyterLab root, over roots of its own holding a 20-scan synthetic cohort (cached)."""
    import papermill as pm
    import torch

    from fmct_lib import pipeline
    from fmct_lib.config import get_profile
    from fmct_lib.data.synthetic.cohort import generate_cohort
    from fmct_lib.models.checkpoints import save_checkpoint
    from fmct_lib.models.vit3d import vit_from_config

    for var in ("FMCT_DATA", "FMCT_CACHE", "FMCT_RUNS", "FMCT_FIGURES"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    shutil.copy(REPO / "data_manifest.csv", tmp_path / "data_manifest.csv")
    monkeypatch.setenv("FMCT_MANIFEST", str(tmp_path / "data_manifest.csv"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline figures, as a user sees them
    scans = generate_cohort("toy", n_internal=20, n_external=0, n_pretrain=0, workers=1)
    pipeline.ensure_cache("synthetic", "toy", workers=1)
    toy = get_profile("toy").model
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "encoder" / "encoder.safetensors", vit_from_config(toy),
                                 config={"model": toy.to_dict()})
    with_lesion = scans[(scans[["iph", "ivh", "sdh", "edh", "sah"]] == 1).any(axis=1)]["scan_id"].iloc[0]
    root = tmp_path / "root"
    root.mkdir()
    pm.execute_notebook(str(REPO / "notebooks" / "07_attention.ipynb"), str(root / "07_attention.ipynb"),
                        parameters={"profile": "toy", "checkpoint": str(checkpoint), "scan_id": with_lesion},
                        prepare_only=True, progress_bar=False)
    return root


def test_the_attention_notebook_in_jupyterlab(attention_notebook, tmp_path):
    """The real notebook, run from the first cell to the last in the browser: its viewer opens on the lesion's
    slice with the outline on, shows the colour bar, and follows the slider."""
    with (jupyterlab(attention_notebook, tmp_path) as (base, token),
          notebook_page(base, token, "07_attention.ipynb", tmp_path) as page):
        conclusion = page.get_by_text("Mean attention distance in the last layer")
        conclusion.wait_for(timeout=150_000)  # the last cell printed: every cell ran
        assert page.get_by_text("Traceback").count() == 0
        outline = page.get_by_role("checkbox", name="lesion outline")
        assert outline.is_checked() and outline.is_enabled()  # the synthetic cohort has lesion masks
        bar = page.locator("img.fmct-colour-bar").first
        assert bar.is_visible() and bar.bounding_box()["width"] > 200
        caption = page.locator(".widget-html-content").last.inner_text()
        assert "lesions (" in caption and ") enrichment pretrained" in caption  # the scan's lesions, named
        page.locator(".jp-OutputArea").filter(has=page.locator("img.fmct-panel")).first.screenshot(
            path=str(tmp_path / "viewer_in_jupyterlab.png"))
        move_slider_and_check_the_image(page)
