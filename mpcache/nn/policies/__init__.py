"""KV-cache eviction / selection policies (MPCache and baselines) behind one interface.

    from mpcache.nn.policies import make_policy
    logits = decoder.prefill(ids, policy=make_policy("mpcache", budget=0.05))
    logits = decoder.decode_step(tok)          # the policy selects every step

See :mod:`.base` for the hooks and the budget semantics, ``docs/policies.md`` for each policy.
"""
from .base import (BIG, Policy, PrefillRecorder, Selection, attention_stats, budget_tokens,
                   clone_cache, select)
from .full import FullCache
from .h2o import H2O
from .mpcache_policy import PRESETS, MPCache
from .quest import Quest
from .snapkv import SnapKV
from .streaming import StreamingLLM
from .topk import TokenTopK

__all__ = ["BIG", "Policy", "PrefillRecorder", "Selection", "attention_stats",
           "budget_tokens", "clone_cache", "select", "FullCache", "StreamingLLM", "H2O",
           "SnapKV", "Quest", "TokenTopK", "MPCache", "PRESETS", "POLICIES", "make_policy"]

#: CLI / harness names.
POLICIES = {p.name: p for p in (FullCache, StreamingLLM, H2O, SnapKV, Quest, TokenTopK,
                                 MPCache)}


def make_policy(name: str, budget=None, **kw) -> Policy:
    """Build a policy by name (``full`` ignores the budget).  ``preset=NAME`` (MPCache:
    :data:`~.mpcache_policy.PRESETS`) starts from a named knob set; other knobs override."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose from {sorted(POLICIES)}") from None
    preset = kw.pop("preset", None)
    if preset is not None:
        table = getattr(cls, "presets", {})
        if preset not in table:
            raise ValueError(f"{name} has no preset {preset!r}; choose from {sorted(table)}")
        kw = {**table[preset], **kw}
    return cls(budget, **kw)
