"""Benchmarks: commands that write JSON (``mpcache bench ...``); no timing in tests."""
from __future__ import annotations

import json


def write_rows(rows, json_path, default=None) -> None:
    """Write a benchmark's rows as JSON to ``json_path`` (nothing if it is empty/None)."""
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(rows, fh, indent=1, default=default)
