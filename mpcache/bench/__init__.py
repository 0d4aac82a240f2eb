"""Benchmarks: commands that write JSON (``mpcache bench ...``); no timing in tests."""
