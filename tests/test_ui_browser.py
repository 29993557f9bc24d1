"""The MLflow UI, rendered by a real browser (Debian's headless chromium), shows an analysis run.

A store holding a finished training run and its analysis is served by ``mlflow server``;
chromium opens the run's artifact view of ``figures/scree.png`` and its overview, and the
rendered DOM must show the image and list the run's metrics.
"""

import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

from conftest import BIN, TINY, make_store

pytestmark = pytest.mark.e2e
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# the UI's "Model training" view, not its GenAI one
VIEW = "workflowType=machine_learning"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render(url: str, screenshot: str | None = None) -> str:
    """The DOM after the page's scripts ran (20 s of virtual time), and optionally a screenshot."""
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--virtual-time-budget=20000", "--window-size=1400,900"]
    if screenshot:
        subprocess.run([*base, f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
    return subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (scripts/install_server_deps.sh installs it)")
        pytest.skip("chromium is not installed; scripts/install_server_deps.sh installs it")
    store = make_store("sqlite", tmp_path_factory.mktemp("ui"))
    store.mlflow_run("single", TINY)
    [run] = store.runs(status="FINISHED")
    store.mlflow_run("analysis", {"run_ids": run.info.run_id, "probes": "0"})
    [analysis] = store.runs("tags.`weightspace.experiment` = 'analysis'", status="FINISHED")
    port = _free_port()
    server = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", store.uri,
                               "--host", "127.0.0.1", "--port", str(port)], cwd=store.workdir, env=store.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).read()
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("mlflow server did not answer /health within 120 s")
        yield url, analysis
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_the_artifact_view_shows_the_scree_figure(served, tmp_path):
    url, analysis = served
    page = f"{url}/#/experiments/{analysis.info.experiment_id}/runs/{analysis.info.run_id}" \
           f"/artifacts/figures/scree.png?{VIEW}"
    shot = tmp_path / "scree.png"
    dom = render(page, str(shot))
    img = re.search(r'<img[^>]*alt="figures/scree\.png"[^>]*>', dom)
    assert img is not None, dom[-2000:]
    assert re.search(r'src="blob:http://127\.0\.0\.1:\d+/', img.group(0))  # the PNG was fetched and shown
    assert "Model training" in dom and shot.stat().st_size > 20_000


def test_the_run_page_lists_the_analysis_metrics(served):
    url, analysis = served
    dom = render(f"{url}/#/experiments/{analysis.info.experiment_id}/runs/{analysis.info.run_id}?{VIEW}")
    for name in ("pca_evr_top2", "null_evr_top2", "pca_evr_top10"):
        assert name in analysis.data.metrics and name in dom, name
    assert analysis.info.run_name in dom
