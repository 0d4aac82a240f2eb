"""Deprecated import path: moved to ``mpcache.cli.eval``.

A thin re-export (mpcache/_shim.py) kept so that code written against
``mpcache.cli_eval`` keeps working; new code imports ``mpcache.cli.eval``.
"""
from __future__ import annotations

from mpcache._shim import reexport
from mpcache.cli import eval as _new

reexport(__name__, _new)
