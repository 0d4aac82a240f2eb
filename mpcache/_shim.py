"""Deprecated import paths as thin re-exports of the modules' new homes.

A shim module (mpcache/protocols/*, mpcache/persistent.py, mpcache/net/accounting.py,
mpcache/jobs.py, mpcache/generate.py, mpcache/explain.py, mpcache/net/launcher.py,
mpcache/bench/*, mpcache/cli_*.py) calls :func:`reexport` once: it copies the new
modules' names (private ones included, so old ``from mpcache.protocols.select import
_reveal_lt`` keeps working) and the old names of renamed functions.  Setting an attribute on the shim -- ``monkeypatch.setattr(shim,
"shuffle", ...)`` in a test -- sets it in the module that owns the name too, where the
code that calls it looks it up, so a patch through an old path still takes effect.
"""
from __future__ import annotations

import sys
import types


class _Reexport(types.ModuleType):
    def _owners(self, name):
        name = self.__dict__["_renamed"].get(name, name)
        return name, [m for m in self.__dict__["_targets"] if name in vars(m)]

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and value.__name__ == f"{self.__name__}.{name}":
            return super().__setattr__(name, value)   # the import system binding a shim's
        real, owners = self._owners(name)             # own submodule (mpcache.bench.ops)
        for m in owners:
            setattr(m, real, value)
        super().__setattr__(name, value)

    def __delattr__(self, name):
        real, owners = self._owners(name)
        for m in owners:
            delattr(m, real)
        super().__delattr__(name)


def reexport(name: str, *targets, renamed: dict | None = None) -> None:
    """Make module ``name`` a re-export of ``targets``; ``renamed``: old name -> new name
    (looked up in the targets)."""
    mod = sys.modules[name]
    renamed = dict(renamed or {})
    for t in targets:
        mod.__dict__.update({k: v for k, v in vars(t).items() if not k.startswith("__")})
    for old, new in renamed.items():
        mod.__dict__[old] = next(vars(t)[new] for t in targets if new in vars(t))
    mod.__dict__["_targets"] = targets
    mod.__dict__["_renamed"] = renamed
    mod.__class__ = _Reexport
