"""A regular (non-editable) ``pip install .`` gives a working package: the analysis imports as
``weightspace.analysis`` (there is no top-level ``analysis``) and the shipped MNIST files come along.

No download: the fresh virtualenv sees the test environment's site-packages (torch, numpy, ...)
through a ``.pth`` line. Python processes ``.pth`` files only in site directories, not in
directories a ``.pth`` adds, so the test environment's editable finder for weightspace does not
leak in: weightspace can only come from what pip installed. The source tree is copied first, so
the build neither writes into the checkout nor picks up a stale ``build/`` from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.e2e

SKIP = {"build", "dist", "mlruns", "mlartifacts", "__pycache__"}


def _ignore(directory, names):
    return [n for n in names if n.startswith(".") or n in SKIP or n.endswith((".egg-info", ".db", ".pyc"))]


def _env() -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV") and not k.startswith("PIP_")
    }
    env.update(
        PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1", PYTHONDONTWRITEBYTECODE="1"
    )
    return env


def _run(cmd, cwd, timeout=300):
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of a fresh venv with the project pip-installed, its site-packages, an empty cwd)."""
    tmp = tmp_path_factory.mktemp("install")
    venv = tmp / "v"
    p = _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp)
    assert p.returncode == 0, p.stderr
    py = venv / "bin" / "python"
    site = Path(
        _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp).stdout.strip()
    )
    assert site.is_dir() and site.is_relative_to(venv), site
    base = sysconfig.get_paths()["purelib"]  # the test environment's site-packages
    (site / "_weightspace_test_base.pth").write_text(base + "\n")

    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=_ignore)
    p = _run([py, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", src], tmp, timeout=600)
    assert p.returncode == 0, f"pip install failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    cwd = tmp / "elsewhere"  # an empty directory: nothing importable from the current directory
    cwd.mkdir()
    return py, site, cwd


def test_installed_package_imports_the_analysis_from_the_venv(installed):
    py, site, cwd = installed
    probe = (
        "import json, sys\n"
        "import weightspace, weightspace.analysis, weightspace.analysis.pca\n"
        "from weightspace.data import shipped_mnist_dir\n"
        "d = shipped_mnist_dir()\n"
        "print(json.dumps({'weightspace': weightspace.__file__, 'analysis': weightspace.analysis.__file__,\n"
        "  'pca': weightspace.analysis.pca.__file__, 'mnist': str(d),\n"
        "  'mnist_files': sorted(p.name for p in d.iterdir()) if d.is_dir() else None,\n"
        "  'editable': [m for m in sys.modules if 'editable' in m]}))\n"
    )
    p = _run([py, "-c", probe], cwd)
    assert p.returncode == 0, p.stderr[-4000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    for key in ("weightspace", "analysis", "pca", "mnist"):
        path = Path(got[key]).resolve()
        assert path.is_relative_to(site.resolve()), (key, path, "is not in the new venv")
        assert not path.is_relative_to(REPO), (key, path, "comes from the checkout")
    assert got["editable"] == [], got["editable"]

    # the shipped MNIST: the same four IDX files as the checkout's, byte for byte
    from weightspace.data import shipped_mnist_dir

    here = shipped_mnist_dir()
    want = sorted(p.name for p in here.glob("*.gz"))
    assert want == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
                    "train-labels-idx1-ubyte.gz"]
    there = Path(got["mnist"])
    assert set(want) <= set(got["mnist_files"]), got["mnist_files"]
    for name in want:
        assert _sha256(there / name) == _sha256(here / name), name


def test_there_is_no_top_level_analysis_package(installed):
    py, _, cwd = installed
    p = _run([py, "-c", "import analysis"], cwd)
    assert p.returncode != 0
    assert "ModuleNotFoundError: No module named 'analysis'" in p.stderr, p.stderr[-2000:]
