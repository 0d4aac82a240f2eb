"""Benchmarks: commands that write JSON (``mpcache bench ...``); no timing in tests."""
from __future__ import annotations

import json


def write_rows(rows, json_path, default=None) -> None:
    """Write a benchmark's rows as JSON to ``json_path`` (nothing if it is empty/None)."""
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(rows, fh, indent=1, default=default)


def modelled_seconds(seconds: float, rounds: int, nbytes: int) -> dict:
    """LAN and WAN latency of a measured step (``mpcache.net.shaping.model_latency``)."""
    from ...net.shaping import model_latency
    return {net: model_latency(seconds, rounds, nbytes, net) for net in ("lan", "wan")}
