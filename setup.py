"""Packaging: the flat layout plus the twistd plugin module.

``twisted/plugins`` must never get an ``__init__.py`` (it would replace
Twisted's own), so the plugin is listed as a single module of that package.
"""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["twistedpush", "twistedpush.*", "django_adapter*"]),
        "twistedpush.static",
    ],
    # The browser client lives in the checkout's static/ and ships inside twistedpush.
    package_dir={"twistedpush.static": "static/serverpush"},
    package_data={
        "twistedpush.static": ["*.js"],
        # static/serverpush/serverpush.js is a symlink to the checkout's static/serverpush/
        # (one source): the developer install serves it from here, a wheel gets a copy.
        "django_adapter": ["templates/*/*.html", "migrations/*.py", "static/serverpush/*.js"],
    },
    py_modules=["twisted.plugins.serverpush_plugin"],
)
