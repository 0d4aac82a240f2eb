"""MPC glue for the eviction / selection policies (issue 7): cost scopes, secret state.

The policies in :mod:`mpcache.nn.policies` are written with backend-neutral ops, so the
SAME code runs on :class:`~mpcache.tensor.SecretTensor` caches: scores are secret, top-k
returns a secret one-hot ``[h, k, n]`` (``k``, ``n`` public) and a gather is the matmul
``onehot @ X``.  This module adds only what MPC needs around them, without touching the
algorithms:

* :func:`instrument` -- cost scopes.  A decode step's policy work (cluster bounds, the
  ``q . bracket`` matmul, top-k, H2O's score bookkeeping) runs in scope ``"selection"``;
  every one-hot gather (:meth:`Selection.gather`, i.e. ``onehot @ X``) in scope
  ``"gather"``.  Gathers happen inside the policy's ``select``, so the raw scope tree has
  ``selection/gather``; :func:`split_breakdown` reports ``selection`` EXCLUSIVE of its
  gathers and ``gather`` as its own scope (so the two add up to the policy's cost).
  Static eviction at prefill (:meth:`Policy.attach` on secret statistics) runs in
  ``"static_eviction"`` (its own gather nested as ``static_eviction/gather``).
* :data:`SECRET_STATE` / :func:`share_state` -- the per-layer state a policy keeps after
  prefill that is secret under MPC (H2O's accumulated attention, SnapKV's pooled votes),
  for benchmarks that run the prefill in plaintext and let the client share the cache.
* :func:`precompute_bounds` -- MPCache's per-cluster key extrema for all full clusters of a
  shared cache, computed once (scope ``"cluster_bounds"``) before the measured step, as a
  private prefill would have done; later steps only add newly filled clusters.
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

__all__ = ["instrument", "install_gather_scope", "split_breakdown", "SECRET_STATE",
           "share_state", "precompute_bounds", "persist_bounds", "selected_clusters",
           "share_stats"]

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


def instrument(policy, compose: bool = True):
    """Put a policy's decode-time work into cost scopes (see the module docstring) and, for
    two-level MPCache, gather through the composed one-hot (:func:`_composed_gather`;
    ``compose=False`` keeps the policy's two-step gather).  Returns the same object."""
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
    if compose and hasattr(policy, "_gather") and getattr(policy, "levels", 1) == 2:
        policy._gather = _composed_gather(policy, policy._gather)
    policy._mpc_instrumented = True
    return policy


def _composed_gather(policy, orig):
    """Two-level MPCache gather with ONE one-hot matmul on K (and one on V).

    The policy's own ``_gather`` applies the coarse one-hot (``k1`` coarse clusters, i.e.
    ``coarse_factor`` times the needed tokens) to K/V and then the fine one-hot to that:
    under MPC a gather costs its output, so the coarse step moves ``coarse_factor`` times
    the kept rows of K and V through the network, per layer.  Here the two one-hots are
    composed first -- ``G = S_f @ (S_c kron I_m)``, ``[k, nc m]``, a tiny integer matmul
    done once per layer group in ``selection`` -- and then ``G @ blocks`` gathers only the
    ``k`` kept clusters.  One-hots are exact ring integers, so the rows gathered are
    IDENTICAL to the policy's (a test checks tokens and clusters against plaintext)."""
    memo = {}

    def gather(x, p, sel_c, sel_f):
        if sel_c is None or sel_f is None or sel_c.onehot is None or F.is_plain(sel_c.onehot):
            return orig(x, p, sel_c, sel_f)
        nc, k1, m, c, s = p["nc"], p["k1"], p["m"], policy.cluster, p["s"]
        key = (id(sel_c), id(sel_f))
        G = memo.get("G") if memo.get("key") == key else None
        if G is None:
            with F.scope(sel_f.onehot, "compose"):
                C = sel_c.onehot                                   # [h|1, k1, nc]
                h = int(C.shape[0])
                eye = np.eye(m, dtype=np.int64).reshape(1, 1, m, 1, m)
                E = (C.reshape(h, k1, 1, nc, 1) * eye).reshape(h, k1 * m, nc * m)
                G = sel_f.onehot @ E                                # [h, k, nc m]
            memo.update(key=key, G=G)
        nkv, n, d = int(x.shape[0]), int(x.shape[1]), int(x.shape[2])
        blocks = x[:, s:s + nc * m * c].reshape(nkv, nc * m, c * d)
        with F.scope(G, "gather"):
            mid = (G @ blocks).reshape(nkv, p["k"] * c, d)
        return F.concatenate([x[:, :s], mid, x[:, n - p["w"]:]], axis=1)

    return gather


def split_breakdown(res, prefix: str) -> dict:
    """``RunResult.breakdown_under(prefix)`` with ``gather`` taken out of ``selection``:
    ``selection`` = policy work without its one-hot gathers, ``gather`` = the gathers."""
    out = res.breakdown_under(prefix)
    if "selection" in out:
        sub = res.breakdown_under(f"{prefix}/selection")
        g = sub.get("gather")
        if g is not None:
            sel = dict(out["selection"])
            for k in ("seconds", "bytes_sent", "offline_bytes_sent", "rounds",
                      "messages_sent", "offline_messages_sent"):
                if k in sel and k in g:
                    sel[k] = max(sel[k] - g[k], 0)
            old = out.get("gather")
            if old:
                g = {k: old.get(k, 0) + g.get(k, 0) for k in g}
            out["selection"], out["gather"] = sel, g
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
        if policy.leader(layer) == layer:
            policy._update_bounds(layer, cache.keys(layer))


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


def selected_clusters(policy, to: int = 0) -> dict:
    """Audit only (reveals the choice to party ``to``): ``layer -> [n_kv, k]`` indices of the
    fine clusters MPCache chose at the last step (within the coarse pick when two-level,
    mapped back to global fine-cluster indices).  Plaintext selections work too."""
    out = {}
    for layer, dyn in enumerate(getattr(policy, "_dyn", []) or []):
        if dyn is None:
            continue
        _n, p, sel_c, sel_f = dyn
        if sel_f is None:
            continue
        fine = _indices(sel_f, to)                  # every party reveals, same order
        coarse = None if sel_c is None else _indices(sel_c, to)
        if fine is None:
            out[layer] = None
            continue
        if sel_c is not None:
            m = p["m"]
            glob = coarse[:, :, None] * m + np.arange(m)[None, None, :]
            glob = glob.reshape(glob.shape[0], -1)
            if glob.shape[0] == 1 and fine.shape[0] != 1:
                glob = np.broadcast_to(glob, (fine.shape[0], glob.shape[1]))
            fine = np.take_along_axis(glob, fine, axis=1)
        out[layer] = fine
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
