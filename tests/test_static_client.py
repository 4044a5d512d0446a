"""serverpush.js as a Django static file: one source, found in both installs, used by the tag."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.contrib.staticfiles import finders
from django.template import Context, Template
from django.test import RequestFactory

from tests.conftest import ROOT

SOURCE = ROOT / "static" / "serverpush" / "serverpush.js"


def render_tag() -> str:
    context = Context({"request": RequestFactory().get("/")})
    return Template("{% load serverpush %}{% serverpush_js %}").render(context)


def test_the_tag_loads_the_client_from_django_static_files():
    assert '<script src="/static/serverpush/serverpush.js">' in render_tag()


def test_a_setting_loads_the_client_from_the_push_server(settings):
    settings.SERVERPUSH_URL = "http://push.example:8013"
    settings.SERVERPUSH_JS_FROM_PUSH_SERVER = True
    assert '<script src="http://push.example:8013/static/serverpush.js">' in render_tag()


def test_developer_install_finds_the_checkout_source():
    assert Path(finders.find("serverpush/serverpush.js")).resolve() == SOURCE


@pytest.mark.integration
def test_wheel_ships_a_copy_django_finds(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", tmp_path, ROOT],
        check=True,
        timeout=600,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("*.whl")
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "-t", target, wheel],
        check=True,
        timeout=600,
    )
    find = textwrap.dedent(
        """
        import django
        from django.conf import settings
        apps = ["contenttypes", "auth", "staticfiles"]
        settings.configure(
            INSTALLED_APPS=[f"django.contrib.{app}" for app in apps] + ["django_adapter"],
            STATIC_URL="/static/",
        )
        django.setup()
        from django.contrib.staticfiles import finders
        print(finders.find("serverpush/serverpush.js"))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", find],
        env={"PYTHONPATH": str(target)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    found = result.stdout.strip()
    assert Path(found).is_relative_to(target) and not Path(found).is_symlink()
    assert Path(found).read_bytes() == SOURCE.read_bytes()
