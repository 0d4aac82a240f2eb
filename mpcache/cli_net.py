"""Deprecated import path: moved to ``mpcache.cli.net``.

A thin re-export (mpcache/_shim.py) kept so that code written against
``mpcache.cli_net`` keeps working; new code imports ``mpcache.cli.net``.
"""
from __future__ import annotations

from mpcache._shim import reexport
from mpcache.cli import net as _new

reexport(__name__, _new)

if __name__ == "__main__":             # ``python -m mpcache.cli_net ...`` as before
    import sys

    sys.exit(_new.main())
