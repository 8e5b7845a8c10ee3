"""The package as a user installs it: a wheel, in a fresh virtual environment, used from another folder."""

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from conftest import REPO


def run(command, **kwargs):
    process = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert process.returncode == 0, f"{command}\n{process.stdout[-2000:]}\n{process.stderr[-2000:]}"
    return process.stdout


def test_a_wheel_installed_without_editable_mode_trains_from_any_folder(tmp_path):
    # Build from a copy, so that the build's own folders stay out of the checkout.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "saved", "log", "log_tensorboard", "results", "build", "*.egg-info", "__pycache__", "hyper"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
         str(source)])
    (wheel,) = (tmp_path / "dist").glob("recbole_gru4rec-*.whl")

    # A fresh venv; its dependencies are those of this one (the test runs offline), reached through a .pth file,
    # which does not run this environment's editable-install hook: the package can only come from the wheel.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    with open(os.path.join(purelib, "dependencies.pth"), "w", encoding="utf-8") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)])

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    location = run([str(python), "-c", "import recbole_gru4rec; print(recbole_gru4rec.__file__)"], cwd=elsewhere)
    assert location.startswith(str(venv))
    out = run([str(venv / "bin" / "recbole-gru4rec"), "--model=GRU4RecPaper", "--dataset=ml-100k", "--epochs=1",
               "--saved=false", "--state=ERROR"], cwd=elsewhere)
    assert "GRU4RecPaper on ml-100k: 1 epochs" in out and "ndcg@10" in out


def test_an_install_on_a_too_new_python_stops_with_one_line(monkeypatch):
    """pip asks the build backend for its requirements first: on Python 3.12 it says why and what to do."""
    spec = importlib.util.spec_from_file_location("backend", os.path.join(REPO, "_build", "backend.py"))
    backend = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(backend)
    backend.get_requires_for_build_wheel()  # this Python is fine
    monkeypatch.setattr(sys, "version_info", (3, 12, 1, "final", 0))
    for hook in (backend.get_requires_for_build_wheel, backend.get_requires_for_build_editable):
        with pytest.raises(SystemExit, match=r"needs Python 3.9-3.11, not 3.12.1: RecBole 1.2.1 requires ray<=2.6.3.*"
                                             r"python3.11 -m venv"):
            hook()
