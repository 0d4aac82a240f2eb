"""MPC glue for the eviction / selection policies (issue 7): cost scopes, secret state.

The policies in :mod:`mpcache.nn.policies` are written with backend-neutral ops, so the
SAME code runs on :class:`~mpcache.tensor.SecretTensor` caches: scores are secret, top-k
returns a secret one-hot ``[h, k, n]`` (``k``, ``n`` public) and a gather is the matmul
``onehot @ X``.  This module adds only what MPC needs around them, without touching the
algorithms:

* :func:`instrument` -- cost scopes.  A decode step's policy work (cluster bounds, the
  ``q . bracket`` matmul, top-k, H2O's score bookkeeping) runs in scope ``"selection"``;
  every one-hot gather (:meth:`Selection.gather`, i.e. ``onehot @ X``) in scope
  ``"gather"``.  Gathers happen inside the policy's ``select`` (``selection/gather``) or,
  for MPCache's clusters, when attention reads the :class:`SelectedRows`
  (``attn_scores/gather``, ``attn_context/gather``); :func:`split_breakdown` reports each
  parent EXCLUSIVE of its gathers and ``gather`` as its own scope (so they add up).
  Static eviction at prefill (:meth:`Policy.attach` on secret statistics) runs in
  ``"static_eviction"`` (its own gather nested as ``static_eviction/gather``).
* :data:`SECRET_STATE` / :func:`share_state` -- the per-layer state a policy keeps after
  prefill that is secret under MPC (H2O's accumulated attention, SnapKV's pooled votes),
  for benchmarks that run the prefill in plaintext and let the client share the cache.
* :func:`precompute_bounds` -- MPCache's per-cluster key extrema (and, with ``rest``, the
  clusters' mean keys and values) for all full clusters of a shared cache, computed once
  (scope ``"cluster_bounds"``) before the measured step, as a private prefill would have
  done; later steps only add newly filled clusters.
  :func:`persist_bounds` then persists them (with the cache: ``KVCache.persist``), so
  add2's per-step products open only their left operands.
* :func:`selected_clusters` -- (audit/tests only) reveal the chosen fine clusters of each
  selecting layer to compare MPC with plaintext.
"""
from __future__ import annotations

import functools

import numpy as np

from . import functional as F
from .policies import base as _base
from .selected_rows import SelectedRows, gather_factor

__all__ = ["MPC_KNOBS", "mpc_options", "instrument", "install_gather_scope", "split_breakdown",
           "SECRET_STATE", "share_state", "precompute_bounds", "persist_bounds",
           "selected_clusters", "share_stats"]

#: Policy knobs (``NAME:knob=val``) that only :func:`instrument` reads, not the policies:
#: they change the MPC cost, never the plaintext choice.
MPC_KNOBS = ("mpc_lazy", "mpc_factor")


def mpc_options(knobs: dict) -> dict:
    """:func:`instrument`'s keyword arguments from a policy's MPC-only knobs:
    ``mpc_lazy`` (default on: attention selects score columns when that moves fewer words)
    and ``mpc_factor`` (default on: add2's lazy selection takes the fine choice's one-hot
    as two small one-hots, :func:`~mpcache.nn.selected_rows.gather_factor`)."""
    return {"lazy": bool(knobs.get("mpc_lazy", True)),
            "factor": bool(knobs.get("mpc_factor", True))}

#: Policy attributes (lists per layer) that hold secret values after prefill.
SECRET_STATE = {"h2o": ("acc", "evicted"), "snapkv": ("score",)}

_installed = False


def install_gather_scope() -> None:
    """Wrap :meth:`Selection.gather` in a ``"gather"`` cost scope when its one-hot is secret
    (a no-op context for plaintext; the algorithm and the result are unchanged)."""
    global _installed
    if _installed:
        return
    orig = _base.Selection.gather

    @functools.wraps(orig)
    def gather(self, x):
        if self.onehot is not None and not F.is_plain(self.onehot):
            with F.scope(self.onehot, "gather"):
                return orig(self, x)
        return orig(self, x)

    _base.Selection.gather = gather
    _installed = True


def instrument(policy, lazy: bool = True, factor: bool = True):
    """Put a policy's decode-time work into cost scopes (see the module docstring) and route
    MPCache's cluster gather through :func:`_cluster_gather` (``lazy=False`` always gathers
    rows instead of letting attention select score columns; ``factor=False`` keeps the
    dense one-hot where :func:`~mpcache.nn.selected_rows.gather_factor` would factor it).
    Returns the same object."""
    install_gather_scope()
    if getattr(policy, "_mpc_instrumented", False):
        return policy
    sel, after = policy.select, policy.after_step

    def select(cache, layer, query):
        with F.scope(query, "selection"):
            return sel(cache, layer, query)

    def after_step(cache, layer, probs):
        with F.scope(probs, "selection"):
            return after(cache, layer, probs)

    policy.select, policy.after_step = select, after_step
    if hasattr(policy, "_gather"):
        policy._gather = _cluster_gather(policy, policy._gather, lazy)
    if isinstance(policy, _base.ScoredPolicy) and lazy:
        policy._rows = _scored_rows(policy._rows)
    if lazy and factor:
        policy.onehot_factor = gather_factor
    policy._mpc_instrumented = True
    return policy


def _cluster_gather(policy, orig, lazy: bool):
    """MPCache's gather of the chosen clusters as a :class:`SelectedRows`: the fine one-hot
    ``G`` ``[h, k, nf]`` (a two-level choice is already one: the coarse stage masks the
    fine scores, :meth:`MPCache._coarse_mask`) applied lazily -- attention either gathers
    those rows or selects score columns instead, whichever moves fewer words
    (:mod:`mpcache.nn.selected_rows`; ``lazy=False``: always gather).  Plaintext and
    index selections take the policy's own gather."""

    def gather(x, p, sel):
        if sel is None or sel.onehot is None or F.is_plain(sel.onehot):
            return orig(x, p, sel)
        o = getattr(policy, "origin", p["s"])
        return SelectedRows(x, sel.onehot, o, p["nf"], policy.cluster, p["w"],
                            lazy=None if lazy else False, head=p["s"])

    return gather


def _scored_rows(orig):
    """H2O's, SnapKV's and token top-k's chosen rows (then the tail rows) as a
    :class:`SelectedRows` with one-row clusters: attention selects score columns or gathers
    rows, whichever moves fewer words (as MPCache's clusters; a factored one-hot selects
    through its factors).  Plaintext and index selections take the policy's own rows."""

    def rows(sel, x, c):
        if sel.onehot is None or F.is_plain(sel.onehot):
            return orig(sel, x, c)
        return SelectedRows(x, sel.onehot, 0, c, 1, int(x.shape[1]) - c, head=0)

    return rows


def split_breakdown(res, prefix: str) -> dict:
    """``RunResult.breakdown_under(prefix)`` with every nested ``gather`` scope (inside
    ``selection``, ``attn_scores`` or ``attn_context``) taken out of its parent and
    reported as the one top-level ``gather``: ``selection`` = policy work without its
    one-hot gathers, ``gather`` = the gathers / column selections."""
    out = res.breakdown_under(prefix)
    keys = ("seconds", "bytes_sent", "offline_bytes_sent", "rounds", "messages_sent",
            "offline_messages_sent")
    for parent in ("selection", "attn_scores", "attn_context"):
        if parent not in out:
            continue
        sub = res.breakdown_under(f"{prefix}/{parent}")
        g = sub.get("gather")
        if g is not None:
            par = dict(out[parent])
            for k in keys:
                if k in par and k in g:
                    par[k] = max(par[k] - g[k], 0)
            old = out.get("gather")
            if old:
                g = {k: old.get(k, 0) + g.get(k, 0) for k in g}
            out[parent], out["gather"] = par, g
        if parent == "selection":
            for k in ("topk", "cluster_bounds"):
                if k in sub:
                    out.setdefault("_selection_detail", {})[k] = sub[k]
    return out


def share_state(party, plain_policy, policy, n_layers: int, client: int = 0) -> None:
    """Copy the secret per-layer state of the client's plaintext ``plain_policy`` into
    ``policy`` as secret tensors (other parties pass ``plain_policy=None``)."""
    for attr in SECRET_STATE.get(policy.name, ()):
        vals = []
        for layer in range(n_layers):
            v = None
            if party.id == client:
                v = getattr(plain_policy, attr)[layer]
                v = None if v is None else np.asarray(v, dtype=np.float64)
            has = announce_flag(party, v is not None, client)
            vals.append(party.share(v, owner=client) if has else None)
        setattr(policy, attr, vals)


def announce_flag(party, flag: bool, src: int) -> bool:
    from .private import announce
    return bool(announce(party, int(bool(flag)), src))


def share_stats(party, stats_per_layer, client: int = 0) -> list:
    """The client's plaintext prefill statistics (``PrefillRecorder.stats``: per layer a
    dict ``key -> [n_kv, n]``) as secret tensors; keys are public."""
    out = []
    for layer_stats in stats_per_layer:
        out.append({k: party.share(np.asarray(v, np.float64) if party.id == client else None,
                                   owner=client) for k, v in layer_stats.items()})
    return out


def precompute_bounds(policy, cache, n_next: int) -> None:
    """MPCache: extrema (and bracket) of every full cluster of each selecting layer, once,
    as the prefill would leave them; call inside a ``"cluster_bounds"`` scope."""
    if not hasattr(policy, "_update_bounds"):
        return
    if cache.length(0) + 1 <= policy.B or policy.plan(n_next)["k"] == 0:
        return
    for layer in range(cache.n_layers):
        if policy.leader(layer) == layer and not policy.dense(layer):
            policy._update_bounds(layer, cache.keys(layer))
        if getattr(policy, "rest", None) and not policy.dense(layer):   # cluster means
            policy._update_rest(layer, cache.keys(layer), cache.values(layer))


def persist_bounds(policy) -> None:
    """MPCache: persist the cluster-bound operands every step's scoring matmul
    (``q . bracket``) and fine-bound gather read -- the bounds :func:`precompute_bounds`
    left, fixed from then on (add2 stops re-opening them; rep3: no-op).  Bounds of
    clusters that fill up later are concatenated on unpersisted (opened per product)."""
    names = policy._operands() if hasattr(policy, "_operands") else ()
    for st in getattr(policy, "_bnd", None) or []:
        for level in ("f", "c"):
            for k in names:
                t = (st.get(level) or {}).get(k)
                if t is not None and not F.is_plain(t):
                    t.persist()
    for st in getattr(policy, "_rest", None) or []:      # rest='mean': the means' tables
        for k in ("k", "v"):
            t = st.get(k)
            if t is not None and not F.is_plain(t):
                t.persist()


def selected_clusters(policy, to: int = 0) -> dict:
    """Audit only (reveals the choice to party ``to``): ``layer -> [n_kv, k]`` indices of the
    fine clusters MPCache chose at the last step (global fine-cluster indices, also when
    two-level).  Plaintext selections work too."""
    out = {}
    for layer, dyn in enumerate(getattr(policy, "_dyn", []) or []):
        if dyn is None:
            continue
        sel = dyn[2]
        if sel is None:
            continue
        out[layer] = _indices(sel, to)    # every party reveals, same order
    return out


def _indices(sel, to):
    if sel.index is not None:
        return np.asarray(sel.index)
    oh = sel.onehot
    if F.is_plain(oh):
        return np.argmax(np.asarray(oh), axis=-1)
    r = oh.reveal(to=to)
    if r is None:
        return None
    return np.argmax(np.asarray(r), axis=-1)
