"""Full cache: attention reads every token (the accuracy reference and cost ceiling)."""
from __future__ import annotations

from .base import Policy

__all__ = ["FullCache"]


class FullCache(Policy):
    """No eviction, no selection.  Output equals the decoder without a policy."""

    name = "full"

    def __init__(self, budget=None, fast: bool = True):
        super().__init__(None, fast)
