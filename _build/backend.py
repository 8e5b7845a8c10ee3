"""The package's build backend: setuptools', after a check that this Python can install RecBole 1.2.1.

Without it, pip on Python 3.12+ fails deep in dependency resolution (no ray<=2.6.3 there) instead of
saying why.
"""

import sys

from setuptools import build_meta as setuptools_backend
from setuptools.build_meta import *  # noqa: F401,F403  (every hook not redefined below is setuptools')

LAST_PYTHON = (3, 11)  # ray 2.6.3, which RecBole 1.2.1 requires at most, has wheels up to CPython 3.11


def check_python():
    """Stop with one line when this Python is newer than the dependencies allow."""
    if sys.version_info[:2] > LAST_PYTHON:
        version = ".".join(map(str, sys.version_info[:3]))
        raise SystemExit(
            f"recbole-gru4rec needs Python 3.9-3.11, not {version}: RecBole 1.2.1 requires ray<=2.6.3, which has no "
            "wheel for newer Pythons; create the environment with python3.11 -m venv"
        )


def get_requires_for_build_wheel(config_settings=None):
    """setuptools' hook, after :func:`check_python`."""
    check_python()
    return setuptools_backend.get_requires_for_build_wheel(config_settings)


def get_requires_for_build_editable(config_settings=None):
    """setuptools' hook, after :func:`check_python`."""
    check_python()
    return setuptools_backend.get_requires_for_build_editable(config_settings)
