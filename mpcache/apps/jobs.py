"""Named jobs runnable from the CLI (``mpcache launch -- JOB ARGS``) and in-process.

A job is a plain SPMD callable ``fn(party, **kwargs)`` (see :mod:`mpcache.runtime`): the
same function runs at the three parties.  Inputs are drawn from a *public* data seed so
the launcher can compute the plaintext reference; only the owner of an input generates
it and passes it to ``party.share`` (the others pass ``None``).  Every job returns
``{"result": <revealed ndarray>, "stats": party.stats()}``.

Besides the built-in names, ``JOB`` may be ``package.module:function`` (e.g. a test's
fault-injection job): the function is called as ``function(party, **kwargs)`` with
``--key value`` arguments parsed as Python literals where possible.
"""
from __future__ import annotations

import argparse
import ast
import importlib
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Param:
    type: type
    default: object
    help: str = ""


@dataclass
class JobSpec:
    name: str
    fn: object                       # fn(party, **kwargs) -> dict
    params: dict = field(default_factory=dict)
    reference: object = None         # reference(**kwargs) -> ndarray (plaintext)
    help: str = ""
    #: private inputs given as ``--NAME value`` to the launcher: value param -> file param.
    #: The launcher writes the value to a 0600 file and passes ``--FILE-PARAM path``
    #: instead, so it never appears on a child's command line, in logs or in output JSON.
    file_inputs: dict = field(default_factory=dict)
    report: object = None            # report(outputs per party) -> extra summary lines

    def parse(self, argv=()) -> dict:
        """Parse ``--key value`` job arguments (defaults filled in)."""
        argv = [a for a in argv if a != "--"]
        for name, file_param in self.file_inputs.items():
            flag = f"--{name.replace('_', '-')}"
            if any(a == flag or a.startswith(flag + "=") for a in argv):
                raise ValueError(f"job {self.name}: {flag} is a private input: put it in a "
                                 f"file readable by its owner only and pass "
                                 f"--{file_param.replace('_', '-')} PATH (`mpcache launch` "
                                 f"and `mpcache generate` do this for you)")
        if not self.params:
            return _parse_free(self.name, argv)
        ap = argparse.ArgumentParser(prog=f"job {self.name}", description=self.help,
                                     add_help=False, allow_abbrev=False)
        for k, p in self.params.items():
            ap.add_argument(f"--{k.replace('_', '-')}", dest=k, type=p.type, default=p.default,
                            help=p.help)
        ns, rest = ap.parse_known_args(list(argv))
        if rest:
            raise ValueError(f"job {self.name}: unknown argument(s) {rest}; it takes "
                             + ", ".join(f"--{k.replace('_', '-')}" for k in self.params))
        return vars(ns)

    def __call__(self, party, **kwargs):
        return self.fn(party, **{**{k: p.default for k, p in self.params.items()}, **kwargs})


def _parse_free(name: str, argv) -> dict:
    out, i = {}, 0
    while i < len(argv):
        a = argv[i]
        if not a.startswith("--") or i + 1 >= len(argv):
            raise ValueError(f"job {name}: arguments must be --key value pairs, got {argv}")
        try:
            v = ast.literal_eval(argv[i + 1])
        except (ValueError, SyntaxError):
            v = argv[i + 1]
        out[a[2:].replace("-", "_")] = v
        i += 2
    return out


# -- inputs (public seed; drawn by the owner only) -----------------------------------------
def _inputs(seed: int, *shapes, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) * scale for s in shapes]


def _result(party, value) -> dict:
    return {"result": None if value is None else np.asarray(value), "stats": party.stats()}


# -- the built-in jobs ---------------------------------------------------------------------
def _matmul(party, m, k, n, seed):
    x, w = _inputs(seed, (m, k), (k, n))
    X = party.share(x if party.id == 0 else None, owner=0)
    W = party.share(w if party.id == 1 else None, owner=1)
    with party.scope("matmul"):
        Y = X @ W
    return _result(party, party.reveal(Y))


def _matmul_ref(m, k, n, seed):
    x, w = _inputs(seed, (m, k), (k, n))
    return x @ w


def _mul(party, rows, cols, seed):
    x, y = _inputs(seed, (rows, cols), (rows, cols))
    X = party.share(x if party.id == 0 else None, owner=0)
    Y = party.share(y if party.id == 1 else None, owner=1)
    with party.scope("mul"):
        Z = X * Y
    return _result(party, party.reveal(Z))


def _mul_ref(rows, cols, seed):
    x, y = _inputs(seed, (rows, cols), (rows, cols))
    return x * y


def _softmax(party, rows, cols, seed):
    (x,) = _inputs(seed, (rows, cols), scale=2.0)
    X = party.share(x if party.id == 0 else None, owner=0)
    with party.scope("softmax"):
        Y = X.softmax(axis=-1)
    return _result(party, party.reveal(Y))


def _softmax_ref(rows, cols, seed):
    (x,) = _inputs(seed, (rows, cols), scale=2.0)
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _lt(party, n, seed):
    x, y = _inputs(seed, (n,), (n,))
    X = party.share(x if party.id == 0 else None, owner=0)
    Y = party.share(y if party.id == 1 else None, owner=1)
    with party.scope("lt"):
        B = X.lt(Y) if hasattr(X, "lt") else X < Y
    return _result(party, party.reveal(B))


def _lt_ref(n, seed):
    x, y = _inputs(seed, (n,), (n,))
    return (x < y).astype(np.float64)


_SEED = Param(int, 0, "public seed of the input data")
JOBS = {
    "matmul": JobSpec("matmul", _matmul, {"m": Param(int, 16, "rows of X"),
                                          "k": Param(int, 32, "inner dimension"),
                                          "n": Param(int, 8, "columns of W"), "seed": _SEED},
                      _matmul_ref, "X[m,k] (P0) @ W[k,n] (P1), revealed to all"),
    "mul": JobSpec("mul", _mul, {"rows": Param(int, 16, ""), "cols": Param(int, 64, ""),
                                 "seed": _SEED},
                   _mul_ref, "element-wise X (P0) * Y (P1)"),
    "softmax": JobSpec("softmax", _softmax, {"rows": Param(int, 4, ""),
                                             "cols": Param(int, 32, "softmax axis length"),
                                             "seed": _SEED},
                       _softmax_ref, "row softmax of X (P0)"),
    "lt": JobSpec("lt", _lt, {"n": Param(int, 64, "elements"), "seed": _SEED},
                  _lt_ref, "X (P0) < Y (P1) element-wise, revealed as 0/1"),
}


def _generate(party, **kw):
    from .serve import generate_job
    return generate_job(party, **kw)


def _generate_report(outputs):
    from .serve import report_lines
    return report_lines(outputs)


JOBS["generate"] = JobSpec(
    "generate", _generate,
    {"prompt_file": Param(str, "", "UTF-8 file with one prompt (read at the client only)"),
     "prompts": Param(str, "", "UTF-8 file, one prompt per line: answered one after the "
                               "other with the weights shared once (client only)"),
     "interactive": Param(int, 0, "1: the client reads prompts from its stdin, one a line "
                                  "(an empty line or end of input ends the session)"),
     "max_new_tokens": Param(int, 8, ""),
     "context_file": Param(str, "", "UTF-8 text placed before each prompt (client only)"),
     "raw": Param(int, 0, "1: no chat template"),
     "policy": Param(str, "full", "eviction policy NAME[:knob=val,...]"),
     "budget": Param(float, 0.0, "kept / prompt tokens"),
     "prefill": Param(str, "private", "private | client (the client then needs the model "
                                      "file: docs/network.md)"),
     "compare_full": Param(int, 1, "1: measure each step on the full cache too"),
     "fixed_length": Param(int, 0, "1: always max-new-tokens steps (hides the length)"),
     "model": Param(str, "smollm2", "smollm2 | tiny-random (plumbing checks)"),
     "idle_timeout": Param(float, 3600.0, "seconds P1/P2 wait for the client's next prompt"),
     "share_store": Param(str, "", "DIR: each party keeps its weight shares in DIR/p{id} "
                                   "and a later run loads them instead of re-sharing "
                                   "(rep3; docs/network.md, 'Share store')")},
    None, "private generation on the packaged SmolLM2: the model owner P1 shares the "
          "weights once, the client P0 gets every answer",
    file_inputs={"prompt": "prompt_file"}, report=_generate_report)


def get_job(name: str) -> JobSpec:
    """A built-in job by name, or ``module:function`` imported on demand."""
    if name in JOBS:
        return JOBS[name]
    if ":" in name:
        mod, _, attr = name.partition(":")
        try:
            obj = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot load job {name!r}: {e}") from None
        return obj if isinstance(obj, JobSpec) else JobSpec(name, obj)
    raise ValueError(f"unknown job {name!r}; built-in jobs: {', '.join(sorted(JOBS))} "
                     f"(or module:function)")


def make_job(name: str, argv=(), **kwargs):
    """``(callable(party), kwargs)`` for a job name and its CLI-style arguments."""
    spec = get_job(name)
    kw = {**spec.parse(argv), **kwargs}
    return (lambda party: spec(party, **kw)), kw


def reference(name: str, **kwargs):
    """The plaintext result of a built-in job (None if the job has no reference)."""
    spec = get_job(name)
    if spec.reference is None:
        return None
    return np.asarray(spec.reference(**{**{k: p.default for k, p in spec.params.items()},
                                        **kwargs}))
