"""Per-layer KV cache with a hook for eviction / selection policies.

Layout: for each layer, K and V of shape ``[n_kv_heads, T, head_dim]`` (keys stored AFTER
RoPE, so a kept token never needs its position again for attention), plus a public int64
array ``positions[T]`` with each kept token's absolute position.  Positions are public in
the MPCache threat model (the number and order of kept tokens is public), and they are what
the causal mask of a multi-token query is built from once tokens have been evicted.

Hook: ``policy`` is ``None`` by default.  Attention always reads the cache through

    keys, values = cache.view(layer, query)

With no policy that is the whole cache.  A policy object may implement

    policy.view(cache, layer, query) -> (keys, values, positions)

to substitute a selection (e.g. one-hot [k, C] @ clustered K, or a public subset); it returns
the public positions of the rows it selected, or ``None`` when the query is a single decode
token (no masking needed).  ``query`` is the RoPE'd, pre-scaled query ``[n_heads, T_q, hd]``.
Optionally ``policy.observe(cache, layer, probs)`` receives the attention probabilities
``[n_kv_heads, group * T_q, S]`` of every call (H2O-style accumulated scores need them).
Static eviction rewrites the stored tokens with :meth:`replace` or :meth:`keep`.

Under MPC, :meth:`persist` makes the current contents (the prompt's prefix, fixed after
prefill) persistent right operands, so add2 stops re-opening them at every step.

Appends grow a buffer geometrically (amortised O(new tokens), so decoding never copies
the prefix): a numpy buffer for plaintext, the share data for secret tensors
(``SecretTensor.grow_into``; a purely local operation).
"""
from __future__ import annotations

import numpy as np

from . import functional as F

__all__ = ["KVCache"]


class KVCache:
    """Keys/values of every layer; ``n_seen`` is the absolute position of the next token."""

    def __init__(self, n_layers: int, policy=None):
        self.n_layers = int(n_layers)
        self.policy = policy
        self.n_seen = 0
        self._k = [None] * self.n_layers   # buffer (numpy) or tensor (secret)
        self._v = [None] * self.n_layers
        self._len = [0] * self.n_layers
        self._pos = [np.zeros(0, dtype=np.int64) for _ in range(self.n_layers)]
        self._view_pos = [None] * self.n_layers
        self._view_sum = [None] * self.n_layers
        self.score_bound = None            # the last view's bound on |query . key|

    # ------------------------------------------------------------------ reading
    def length(self, layer: int) -> int:
        return self._len[layer]

    def keys(self, layer: int):
        k = self._k[layer]
        return k if k is None else k[:, : self._len[layer]]

    def values(self, layer: int):
        v = self._v[layer]
        return v if v is None else v[:, : self._len[layer]]

    def positions(self, layer: int) -> np.ndarray:
        return self._pos[layer]

    def view(self, layer: int, query, score_bound: float | None = None):
        """What attention attends to: the full cache, or the policy's selection.
        ``score_bound``: the attention's public bound on ``|query . key|`` (None: none
        known), kept as :attr:`score_bound` for a policy that compares such scores."""
        self.score_bound = score_bound
        if self.policy is None:
            self._view_pos[layer] = self._pos[layer]
            return self.keys(layer), self.values(layer)
        keys, values, positions = self.policy.view(self, layer, query)
        self._view_pos[layer] = None if positions is None else np.asarray(positions, np.int64)
        summary = getattr(self.policy, "summary", None)
        self._view_sum[layer] = summary(layer) if summary is not None and \
            int(query.shape[1]) == 1 else None
        return keys, values

    def view_summary(self, layer: int):
        """Weighted summary entries the last :meth:`view` attends to besides its rows:
        ``(keys [n_kv, m, d], values [n_kv, m, d], weights [h, 1, m], weight_bound)`` or
        None (MPCache's ``rest='mean'``: one entry per unread cluster)."""
        return self._view_sum[layer]

    def view_positions(self, layer: int):
        """Public positions of the rows the last :meth:`view` returned (None: unmasked)."""
        return self._view_pos[layer]

    def observe(self, layer: int, probs) -> None:
        if self.policy is not None and hasattr(self.policy, "observe"):
            self.policy.observe(self, layer, probs)

    # ------------------------------------------------------------------ writing
    def append(self, layer: int, k, v, positions) -> None:
        """Append ``k, v`` of shape [n_kv_heads, T_new, head_dim] at public ``positions``."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        t_new = positions.shape[0]
        old_k, n = self._k[layer], self._len[layer]
        if old_k is None:
            if F.is_plain(k) and F.is_plain(v):
                self._k[layer], self._v[layer] = self._grow(None, k, 0), self._grow(None, v, 0)
            else:
                self._k[layer], self._v[layer] = k, v
        elif F.is_plain(old_k) and F.is_plain(k) and F.is_plain(v):
            self._k[layer] = self._grow(old_k, k, n)
            self._v[layer] = self._grow(self._v[layer], v, n)
        elif hasattr(k, "grow_into") and not F.is_plain(old_k) and old_k.frac == k.frac:
            # secret tensors: the same amortised buffer, on the share data (local op)
            self._k[layer] = k.grow_into(old_k, n)
            self._v[layer] = v.grow_into(self._v[layer], n)
        else:
            self._k[layer] = F.concatenate([self.keys(layer), k], axis=1)
            self._v[layer] = F.concatenate([self.values(layer), v], axis=1)
        self._len[layer] = n + t_new
        self._pos[layer] = np.concatenate([self._pos[layer], positions])

    @staticmethod
    def _grow(buf, new, n):
        new = np.asarray(new)
        t = new.shape[1]
        if buf is None or buf.shape[1] < n + t or buf.dtype != new.dtype:
            cap = max(16, 2 * (n + t))
            grown = np.empty((new.shape[0], cap, new.shape[2]), dtype=new.dtype)
            if buf is not None and n:
                grown[:, :n] = buf[:, :n]
            buf = grown
        buf[:, n:n + t] = new
        return buf

    def replace(self, layer: int, keys, values, positions) -> None:
        """Overwrite a layer's contents (compaction / eviction results)."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        self._k[layer], self._v[layer] = keys, values
        self._len[layer] = positions.shape[0]
        self._pos[layer] = positions

    def keep(self, layer: int, index) -> None:
        """Keep only the rows at PUBLIC indices ``index`` (static eviction by public choice)."""
        index = np.asarray(index, dtype=np.int64)
        self.replace(layer, self.keys(layer)[:, index], self.values(layer)[:, index],
                     self._pos[layer][index])

    def persist(self) -> None:
        """Persist every secret layer's current K and V as right operands of the products
        that read them at every step (``q @ K^T``, ``p @ V``, a policy's ``onehot @
        blocks``): under add2 the prefix is opened once, masked (8 bytes per element per
        party), and later products open only their left operand; rep3: no-op.  Only the
        valid rows are persisted (the buffer is compacted to them; the next append
        regrows it).  Rows appended later are not persisted: products over them mask
        and open just those rows (mpcache/persistent.py).  Plaintext caches: no-op."""
        for layer in range(self.n_layers):
            n = self._len[layer]
            for store in (self._k, self._v):
                t = store[layer]
                if t is None or F.is_plain(t) or n == 0:
                    continue
                if int(t.shape[1]) != n:
                    t = t[:, :n].copy()
                store[layer] = t.persist()

    def reset(self) -> None:
        self.__init__(self.n_layers, self.policy)
