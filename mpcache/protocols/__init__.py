"""Deprecated package: the old home of the protocols.

The share-level engine is now :mod:`mpcache.mpc` (base, rep3, add2, truncation,
persistent, pair, compare_core, costs) and the functions on SecretTensor are
:mod:`mpcache.functions` (compare, select, convert, poly, approx, reciprocal,
activations).  Every module here is a thin re-export of its new home, kept so that old
import paths keep working.
"""
