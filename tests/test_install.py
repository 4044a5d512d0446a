"""``twistd`` finds the plugin after ``pip install .`` and after the developer install."""

import subprocess
import venv
from pathlib import Path

import pytest

from tests.conftest import ROOT, twistd

pytestmark = pytest.mark.integration


def plugin_help(twistd_path: str, cwd: Path) -> str:
    result = subprocess.run(
        [twistd_path, "serverpush", "--help"], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_developer_install_finds_the_plugin_outside_the_checkout(tmp_path):
    out = plugin_help(twistd(), tmp_path)
    assert "--history-size" in out and "--redis" in out


def test_pip_install_into_a_fresh_venv(tmp_path):
    target = tmp_path / "venv"
    venv.create(target, with_pip=True)
    python = target / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", str(ROOT)],
        check=True,
        timeout=600,
        cwd=tmp_path,
    )
    out = plugin_help(str(target / "bin" / "twistd"), tmp_path)
    assert "--notifier" in out
    listing = "import os, twisted.plugins as p; print(os.listdir(p.__path__[0]))"
    installed = subprocess.run(
        [python, "-c", listing], capture_output=True, text=True, check=True, cwd=tmp_path
    ).stdout
    assert "serverpush_plugin.py" in installed
