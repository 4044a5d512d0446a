"""Packaging: the flat layout plus the twistd plugin module.

``twisted/plugins`` must never get an ``__init__.py`` (it would replace
Twisted's own), so the plugin is listed as a single module of that package.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["twistedpush", "twistedpush.*", "django_adapter*"]),
    py_modules=["twisted.plugins.serverpush_plugin"],
    include_package_data=True,
)
