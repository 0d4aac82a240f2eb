"""Accuracy harness for KV-cache policies on the plaintext SmolLM2 path.

:mod:`.tasks` generates RULER-style samples, :mod:`.harness` runs policies on them (one
prefill per sample, forked per policy), :mod:`.plot` draws the results; the CLI is
``mpcache eval`` (:mod:`mpcache.cli.eval`).
"""
from .tasks import DEPTHS, TASKS, Sample, TaskConfig, TaskGenerator, score

__all__ = ["DEPTHS", "TASKS", "Sample", "TaskConfig", "TaskGenerator", "score"]
