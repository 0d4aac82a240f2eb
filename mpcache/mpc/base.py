"""What both protocols share: the share layout and the local (communication-free) ops.

A party's share of a tensor of shape ``S`` is one uint64 array ``data`` of shape
``(slots, *S)``: rep3 keeps two ring elements per value (slots=2), add2 one (slots=1).
Reshape, transpose, indexing, concatenation, sum and addition act on ``data`` with the
leading slot axis left alone, so :class:`mpcache.tensor.SecretTensor` implements them once
for both protocols.  The add2 dealer holds no data: its ``data`` is a zero-strided
*phantom* of the right shape (no memory) so it can follow the program's shapes and
produce correlated randomness of the right sizes.
Docs: docs/protocols.md; step-by-step walk-through: docs/teaching.md (mpcache explain).
"""
from __future__ import annotations

import numpy as np

from ..ring import RING


class Group:
    """The group a sharing lives in: arithmetic (Z_2^64, +) or boolean (64-bit words, XOR).
    Sharing and revealing are the same protocol in both; only the operation differs."""

    def __init__(self, prefix: str, split, combine):
        self.prefix = prefix          # message-tag prefix: "" (arithmetic) or "b"
        self.split = split            # x, r -> the owner's other share
        self.combine = combine        # share, share -> value


ARITH = Group("", np.subtract, np.add)
XOR = Group("b", np.bitwise_xor, np.bitwise_xor)


class ProtocolError(ValueError):
    """Invalid use of a protocol (bad owner, bad shapes...)."""


def phantom(shape, slots: int) -> np.ndarray:
    """A zero-memory stand-in share of the given shape (for parties that hold none)."""
    return np.broadcast_to(np.zeros((), dtype=RING), (slots,) + tuple(shape))


def is_phantom(a: np.ndarray) -> bool:
    return a.ndim > 0 and all(s == 0 for s in a.strides) and a.size > 1


def align(data: np.ndarray, ndim: int) -> np.ndarray:
    """Insert axes after the slot axis so the value part has ``ndim`` dims (broadcasting)."""
    extra = ndim - (data.ndim - 1)
    if extra <= 0:
        return data
    return data.reshape((data.shape[0],) + (1,) * extra + data.shape[1:])


class Protocol:
    """Interface of a sharing protocol; see rep3.py and add2.py for the two instances.

    Interactive methods take and return share ``data`` arrays (ring elements, no
    fixed-point meaning); fixed-point bookkeeping lives in SecretTensor.
    """

    name = "?"
    slots = 0

    def __init__(self, party):
        self.party = party
        self.id = party.id

    #: False only for the add2 dealer, which holds no shares.
    active = True

    #: Whether a product's cost is its operands (True: add2's Beaver products open both
    #: operands masked) or its output (False: rep3 re-shares the output).  Callers that can
    #: shape a product either way read it (a factored one-hot: functions/factored.py).
    products_open_operands = False

    # -- sharing (``g``: the arithmetic or the XOR group, same protocol) -----------------
    def share(self, x: np.ndarray | None, owner: int, g: Group = ARITH) -> np.ndarray:
        raise NotImplementedError

    def reveal(self, data: np.ndarray, to: int | None, g: Group = ARITH) -> np.ndarray | None:
        raise NotImplementedError

    # -- local -------------------------------------------------------------------------
    def add_public(self, data: np.ndarray, c: np.ndarray, g: Group = ARITH) -> np.ndarray:
        raise NotImplementedError

    # -- XOR sharing: the same three methods over the boolean group -------------------------
    def bool_share(self, x, owner):
        """``share`` over XOR (costs as the protocol's ``share``)."""
        return self.share(x, owner, XOR)

    def bool_reveal(self, data, to):
        return self.reveal(data, to, XOR)

    def bool_xor_public(self, data, c):
        """XOR public words in where ``add_public`` would add them."""
        return self.add_public(data, c, XOR)

    # -- interactive ----------------------------------------------------------------------
    def mul(self, a, b):
        raise NotImplementedError

    def matmul(self, a, b):
        raise NotImplementedError

    def mul_trunc(self, a, b, f: int):
        raise NotImplementedError

    def matmul_trunc(self, a, b, f: int):
        raise NotImplementedError

    def trunc(self, a, f: int):
        raise NotImplementedError

    def persist(self, w) -> dict:
        """Precompute per-operand state for a right operand used in many matmuls: a dict of
        arrays with the share layout of ``w`` (so local view ops apply to them as to the
        share; mpc/persistent.py), empty if the protocol needs none."""
        raise NotImplementedError

    def matmul_persistent(self, x, w, state, f_bits=None, twin_bits=None):
        """``x @ w`` for a persisted ``w``; ``state``: a mpcache.mpc.persistent.Persisted (its
        ``arrays`` from :meth:`persist`, viewed like ``w``; ``fresh``: elements not covered).
        Truncates by ``f_bits`` if given; ``twin_bits``: also returns the product truncated
        by ``twin_bits`` (both truncations in the same rounds)."""
        raise NotImplementedError

    def zeros_like_share(self, shape) -> np.ndarray:
        if not self.active:
            return phantom(shape, self.slots)
        return np.zeros((self.slots,) + tuple(shape), dtype=RING)

    def check_owner(self, owner: int) -> None:
        if owner not in (0, 1, 2):
            raise ProtocolError(f"owner must be party 0, 1 or 2, got {owner!r}")

    # -- shape helpers shared by both protocols -----------------------------------------------
    @staticmethod
    def send_shape(party, to: int, shape, tag: str) -> None:
        party.send(to, np.asarray(shape, dtype=np.int64).reshape(-1), tag)

    @staticmethod
    def recv_shape(party, frm: int, tag: str) -> tuple:
        return tuple(int(s) for s in party.recv(frm, tag))


# -- message tags ---------------------------------------------------------------------------
#: Narration of the messages of the XOR group's reveal (both protocols), per tag (or ``*``
#: pattern): ``title``; ``local``, what the parties compute for it; ``learns``, why the
#: receiver learns only ``kind`` ("random": masked, the default; "dealer", "shape",
#: "output", "key", "pattern").  ``mpcache explain`` and the trace viewer collect these
#: tables (:data:`mpcache.apps.explain.TAGS`); the tags are the strings the code above
#: sends.
TAGS = {
    "*.breveal": dict(
        title="reveal of XOR-shared words",
        local="each party sends the XOR component the receiver is missing",
        learns="the missing component, so it reconstructs the word",
        kind="output"),
}
