"""The installs a newcomer does work, and ``twistd`` then finds the plugin from anywhere:
the README's install block in a fresh clone, a wheel built with ``python -m build``
(what docs/django.md points to), and the developer install."""

import shutil
import subprocess
import sys
import urllib.request
import venv
import zipfile
from pathlib import Path

import pytest

import twistedpush
from tests import conftest
from tests.conftest import ROOT, twistd
from tests.test_readme import shell_env, snippet

pytestmark = pytest.mark.integration


def plugin_help(twistd_path: str, cwd: Path, option: str = "--help") -> str:
    result = subprocess.run(
        [twistd_path, "serverpush", option], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """The checkout's files as a clone would have them: tracked or new, not ignored."""
    target = tmp_path / "twistedpush"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True, text=True,
    ).stdout  # fmt: skip
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_symlink() or source.exists():  # not deleted in the work tree
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name, follow_symlinks=False)
    return target


def test_developer_install_finds_the_plugin_outside_the_checkout(tmp_path):
    out = plugin_help(twistd(), tmp_path)
    assert "--history-size" in out and "--redis" in out


def test_readme_install_in_a_fresh_clone(clone, tmp_path):
    result = subprocess.run(
        ["bash", "-ec", snippet("install")], cwd=clone, env=shell_env(),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--notifier" in result.stdout
    bin_dir = clone / ".venv" / "bin"
    assert "--notifier" in plugin_help(str(bin_dir / "twistd"), tmp_path)
    examples = "import twisted.plugins.serverpush_plugin, websockets.sync.client"
    subprocess.run([bin_dir / "python", "-c", examples], check=True, cwd=tmp_path)


def test_a_built_wheel_installs_and_serves(clone, tmp_path, monkeypatch, push_server):
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", tmp_path / "dist", clone],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    assert "deprecated" not in built.stdout + built.stderr  # a future setuptools refuses it
    [wheel] = (tmp_path / "dist").glob("*.whl")
    assert "twistedpush/static/serverpush.js" in zipfile.ZipFile(wheel).namelist()

    target = tmp_path / "venv"
    venv.create(target, with_pip=True)
    install = [target / "bin" / "python", "-m", "pip", "install", "--quiet", wheel]
    subprocess.run(install, check=True, timeout=600, cwd=tmp_path)
    installed_twistd = str(target / "bin" / "twistd")
    version = plugin_help(installed_twistd, tmp_path, "--version")
    assert version.strip() == f"twistedpush {twistedpush.__version__}"
    assert "--notifier" in plugin_help(installed_twistd, tmp_path)

    monkeypatch.setattr(conftest, "twistd", lambda: installed_twistd)
    server = push_server()  # the wheel's twistd, in tmp_path
    with urllib.request.urlopen(f"{server.url}/static/serverpush.js", timeout=5) as response:
        assert response.read() == (ROOT / "static" / "serverpush" / "serverpush.js").read_bytes()
