"""Deprecated import path: moved to ``mpcache.cli.teach``.

A thin re-export (mpcache/_shim.py) kept so that code written against
``mpcache.cli_teach`` keeps working; new code imports ``mpcache.cli.teach``.
"""
from __future__ import annotations

from mpcache._shim import reexport
from mpcache.cli import teach as _new

reexport(__name__, _new)
