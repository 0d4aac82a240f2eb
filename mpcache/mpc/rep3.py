"""Replicated 3PC over Z_2^64 (semi-honest, honest majority).

References: Araki, Furukawa, Lindell, Nof, Ohara, "High-Throughput Semi-Honest Secure
Three-Party Computation with an Honest Majority", CCS 2016; Mohassel, Rindal, "ABY3",
CCS 2018, Sec. 3 and 5.1.  Cost formulas: docs/protocols.md.

Sharing: x = x0 + x1 + x2; party P_i holds (x_i, x_{i+1}) as ``data[0], data[1]``.
Any two parties can reconstruct; one party's two components are uniform and independent
of x.  Zero-sharings come from the pairwise keys (``alpha_i = F(k_i) - F(k_{i-1})``) with
no communication.

What each party learns: nothing but uniformly random ring elements, except at an
explicit ``reveal`` (the output) and in truncation, where P0 and P1 see ``x + r`` for a
uniform ``r`` unknown to them (uniform as well).
"""
from __future__ import annotations

import numpy as np

from ..kernels import ring_matmul, roll_rows
from ..pages import small_pages
from ..ring import RING
from . import truncation as tr
from .base import ARITH, XOR, Group, Protocol


class Rep3(Protocol):
    name = "rep3"
    slots = 2

    @property
    def next(self):
        return (self.id + 1) % 3

    @property
    def prev(self):
        return (self.id - 1) % 3

    # -- sharing ------------------------------------------------------------------------
    def share(self, x, owner, g: Group = ARITH):
        """Owner o sets x_{o+2} = 0, draws x_o from its key with P_{o-1} and sends
        x_{o+1} = x - x_o to P_{o+1}: 1 round, 8 bytes/value from the owner only.

        Each non-owner sees one uniform value (x - x_o, or x_o) and a public zero, which
        is enough: later products re-randomise with zero-sharings.  The shape reaches
        P_{o+2} in a 1-element-per-dimension message.  ``g=XOR``: the same over XOR."""
        self.check_owner(owner)
        p = self.party
        o = owner
        tag = f"rep3.{g.prefix}share"
        if self.id == o:
            x = np.asarray(x, dtype=RING)
            xo = p.prg_prev.ring(x.shape)
            xo1 = g.split(x, xo)
            p.send(self.next, xo1, tag)
            self.send_shape(p, self.prev, x.shape, tag + ".shape")
            return np.stack([xo, xo1])
        # The public zero is left as np.zeros made it: a large one is never-touched
        # memory (no resident pages; small pages so that writing the other component
        # faults no huge page across it: mpcache/pages.py).
        if self.id == (o + 1) % 3:      # holds (x_{o+1}, x_{o+2} = 0)
            xo1 = p.recv(o, tag)
            out = small_pages(np.zeros((2,) + xo1.shape, RING))
            out[0] = xo1
            return out
        shape = self.recv_shape(p, o, tag + ".shape")   # P_{o+2}: (0, x_o)
        out = small_pages(np.zeros((2,) + tuple(shape), RING))
        out[1] = p.prg_next.ring(shape)
        return out

    def reveal(self, data, to, g: Group = ARITH):
        """To all: P_i sends x_{i+1} to P_{i-1} (1 round, 8 bytes/value each).
        To one party t: P_{t+1} sends x_{t+2} to P_t."""
        p = self.party
        tag = f"rep3.{g.prefix}reveal"
        if to is None:
            p.send(self.prev, data[1], tag)
            return g.combine(g.combine(data[0], data[1]),
                             p.recv(self.next, tag, data.shape[1:]))
        if self.id == (to + 1) % 3:
            p.send(to, data[1], tag)
        if self.id == to:
            return g.combine(g.combine(data[0], data[1]), p.recv(self.next, tag, data.shape[1:]))
        return None

    # -- local --------------------------------------------------------------------------
    def add_to_component(self, data, c, j, g: Group = ARITH):
        """Add (g=XOR: xor) public ``c`` into component x_j: held in slot 0 by P_j and in
        slot 1 by P_{j-1}."""
        shape = np.broadcast_shapes(data.shape[1:], np.shape(c))
        out = np.array(np.broadcast_to(data, (2,) + shape))
        if self.id == j:
            out[0] = g.combine(out[0], c)
        elif self.id == (j - 1) % 3:
            out[1] = g.combine(out[1], c)
        return out

    def add_public(self, data, c, g: Group = ARITH):
        return self.add_to_component(data, c, 0, g)

    def _zero(self, shape):
        return self.party.prg_next.ring(shape) - self.party.prg_prev.ring(shape)

    # -- multiplication --------------------------------------------------------------------
    def _local_products(self, a, b, matmul: bool):
        """3-out-of-3 additive share z_i of a*b (or a@b), masked by a zero-sharing."""
        if matmul:
            z = _cross_matmul(a, b)
        else:
            z = a[0] * (b[0] + b[1]) + a[1] * b[0]
        return z + self._zero(z.shape)

    def _reshare(self, z, tag):
        """P_i sends z_i to P_{i-1}: 1 round, 8 bytes per value per party."""
        self.party.send(self.prev, z, tag)
        return np.stack([z, self.party.recv(self.next, tag, z.shape)])

    def mul(self, a, b):
        return self._reshare(self._local_products(a, b, False), "rep3.mul")

    def matmul(self, a, b):
        return self._reshare(self._local_products(a, b, True), "rep3.matmul")

    # -- persistent operands (weights, KV-cache prefix): a no-op here ---------------------
    def persist(self, w):
        """Nothing to precompute: a rep3 matmul already costs only its output size.
        (Caching the slot sum w_i + w_{i+1} would save one pass over the weight per
        product but costs a third copy of every weight: 1.1 GB per party for SmolLM2.)"""
        return {}

    def matmul_persistent(self, x, w, state, f_bits=None, twin_bits=None):
        """``twin_bits``: also the product truncated by ``twin_bits`` (a second masked
        opening of the same local product, a branch in the same 2 rounds: mpcache.branches);
        returns both."""
        z = _cross_matmul(x, w)
        z = z + self._zero(z.shape)
        if f_bits is None:
            return self._reshare(z, "rep3.matmul")
        one = lambda f: self._truncate(z, np.uint64(0), z.shape, f,  # noqa: E731
                                       True, "rep3.matmul_trunc")
        if twin_bits is None:
            return one(f_bits)
        return tuple(self.party.parallel(lambda: one(f_bits), lambda: one(twin_bits)))

    # -- truncation ---------------------------------------------------------------------------
    # Exact truncation (truncation.py): open c = x + 2^62 + r to P0 and P1 (round 1), each
    # computes an additive share of x >> f, then re-share to replicated form (round 2).
    def _open_c(self, own, shared, shape, f, fused, tag):
        """Round 1.  ``own``: this party's contribution (at P2 only when ``fused``: its
        3-additive part); ``shared``: a term both openers know (x_1 for a replicated
        input, 0 for a 3-additive one).  Returns (c, s_part, m_part) at P0/P1, Nones at P2."""
        p = self.party
        if self.id == 2:
            s0, m0, s1, m1 = tr.dealer_mask(p.prg_next, p.prg_prev, shape, f)
            p.send(1, np.stack([s1, m1]), tag + ".deal", offline=True)
            if fused:
                p.send(0, own, tag + ".open")
                p.send(1, own, tag + ".open")
            return None, None, None
        if self.id == 0:
            ra, s_part, m_part = tr.p0_mask(p.prg_prev, shape)    # key k_2 (P2-P0)
            u = tr.offset(own + ra)
        else:
            u = own + tr.p1_mask(p.prg_next, shape)                 # key k_1 (P1-P2)
            sm = p.recv(2, tag + ".deal", (2,) + tuple(shape))
            s_part, m_part = sm[0], sm[1]
        other = 1 - self.id
        p.send(other, u, tag + ".open")
        c = u + p.recv(other, tag + ".open", shape) + shared
        if fused:
            c = c + p.recv(2, tag + ".open", shape)
        return c, s_part, m_part

    def _reshare_2of2(self, y, shape, tag):
        """Round 2: openers' additive shares (P0: yA, P1: yB) -> replicated.
        y0 = F(k_2); P0 sends y1 = yA - y0 - rho to P1; P1 sends y2 = yB + rho to P2,
        with rho = F(k_0) so P2 sees a masked value."""
        p = self.party
        if self.id == 0:
            y0 = p.prg_prev.ring(shape)
            y1 = y - y0 - p.prg_next.ring(shape)
            p.send(1, y1, tag + ".reshare")
            return np.stack([y0, y1])
        if self.id == 1:
            y2 = y + p.prg_prev.ring(shape)
            p.send(2, y2, tag + ".reshare")
            return np.stack([p.recv(0, tag + ".reshare", shape), y2])
        y0 = p.prg_next.ring(shape)
        return np.stack([p.recv(1, tag + ".reshare", shape), y0])

    def _truncate(self, own, shared, shape, f, fused, tag="rep3.trunc"):
        c, s_part, m_part = self._open_c(own, shared, shape, f, fused, tag)
        y = None if self.id == 2 else tr.opener_share(c, s_part, m_part, f, self.id == 0)
        return self._reshare_2of2(y, shape, tag)

    def trunc(self, a, f):
        """Replicated x -> x >> f.  P0 contributes x_0, P1 contributes x_2; both know x_1.
        2 rounds; P0 and P1 send 2 values each per element, P2 none online."""
        shape = a.shape[1:]
        if self.id == 0:
            return self._truncate(a[0], a[1], shape, f, False)
        if self.id == 1:
            return self._truncate(a[1], a[0], shape, f, False)
        return self._truncate(None, None, shape, f, False)

    def _mul_trunc(self, a, b, f, matmul):
        """Fused fixed-point product: the 3-additive products go straight into the masked
        opening (no separate multiplication round).  2 rounds, 2 values/element/party."""
        z = self._local_products(a, b, matmul)
        tag = "rep3.matmul_trunc" if matmul else "rep3.mul_trunc"
        return self._truncate(z, np.uint64(0), z.shape, f, True, tag)

    def mul_trunc(self, a, b, f):
        return self._mul_trunc(a, b, f, False)

    def matmul_trunc(self, a, b, f):
        return self._mul_trunc(a, b, f, True)

    # =====================================================================================
    # Boolean primitives (see pair.py, compare_core.py, mpcache/booltensor.py and
    # docs/nonlinear-compare.md).  XOR sharing with the same layout:
    # P_i holds (b_i, b_{i+1}), b = b0 ^ b1 ^ b2.
    # =====================================================================================
    def bool_zero(self, shape):
        """XOR zero-sharing F(k_i) ^ F(k_{i-1}) (no communication)."""
        return self.party.prg_next.ring(shape) ^ self.party.prg_prev.ring(shape)

    def bool_and(self, a, b):
        """ABY3 AND: z_i = a_i b_i ^ a_i b_{i+1} ^ a_{i+1} b_i ^ zero_i, sent to P_{i-1}.
        1 round, 8 bytes per word per party."""
        z = (a[0] & b[0]) ^ (a[0] & b[1]) ^ (a[1] & b[0])
        z = z ^ self.bool_zero(z.shape)
        self.party.send(self.prev, z, "rep3.and")
        return np.stack([z, self.party.recv(self.next, "rep3.and", z.shape)])

    def a2b_summands(self, data):
        """Two XOR-shared words whose ring sum is x: y = x0 + x1 input by P0 (1 round,
        8 bytes/value from P0) and x2, already an XOR sharing (0, 0, x2)."""
        shape = data.shape[1:]
        y = self.bool_share(data[0] + data[1] if self.id == 0 else None, 0)
        z = np.zeros((2,) + shape, RING)
        if self.id == 1:
            z[1] = data[1]
        elif self.id == 2:
            z[0] = data[0]
        return y, z

    # -- the helper-party bit engine (pair.Pair) with P1, P2 as data parties, P0 helper --
    def pair_roles(self):
        return 1, 2, 0

    def to_pair(self, data, g: Group = ARITH):
        """Replicated -> 2-of-2 between P1 (x1 + x2) and P2 (x0); free.  ``g=XOR``: the
        same for XOR shares (P1: b1 ^ b2)."""
        if self.id == 1:
            return g.combine(data[0], data[1])
        if self.id == 2:
            return np.array(data[1])
        return np.zeros(data.shape[1:], RING)

    def bool_to_pair(self, data):
        return self.to_pair(data, XOR)

    def from_pair(self, y, shape, tag=None, offline=False, g: Group = ARITH):
        """2-of-2 (P1: yA, P2: yB) -> replicated, in the group ``g`` (+ or XOR):
        x2 = F(k_1), rho = F(k_1); P1 sends x1 = (yA + rho) - x2 to P0, P2 sends
        x0 = yB - rho to P0 (``-``: the group's split, XOR for boolean shares).
        1 round, 8 bytes/value from P1 and P2; P0 sees values masked by k_1."""
        p = self.party
        shape = tuple(shape)
        tag = f"rep3.{g.prefix}from_pair" if tag is None else tag
        if self.id == 1:
            x2, rho = p.prg_next.ring(shape), p.prg_next.ring(shape)
            x1 = g.split(g.combine(y, rho), x2)
            p.send(0, x1, tag, offline=offline)
            return np.stack([x1, x2])
        if self.id == 2:
            x2, rho = p.prg_prev.ring(shape), p.prg_prev.ring(shape)
            x0 = g.split(y, rho)
            p.send(0, x0, tag, offline=offline)
            return np.stack([x2, x0])
        x0 = p.recv(2, tag, shape)
        x1 = p.recv(1, tag, shape)
        return np.stack([x0, x1])

    def bool_from_pair(self, y, shape, tag=None):
        """2-of-2 XOR (P1, P2) -> replicated XOR: :meth:`from_pair` over XOR."""
        return self.from_pair(y, shape, tag, g=XOR)

    def random_onehot(self, m, N):
        """Offline (data-independent) preprocessing for one-hot vectors: ``m`` replicated
        one-hot rows of length N of random r = r_a + r_b (mod N) and 2-of-2 (P1, P2)
        shares of r.  P0 knows r_a only, P1 and P2 know r_b only, so nobody knows r.
        P0 shares onehot(r_a) (8mN bytes to P1), P1 and P2 rotate their 2-of-2 form by
        r_b (key k_1) and re-share to replicated (8mN bytes each to P0); P0 sends
        r_a - t to P2 (t from k_0).  All flagged offline."""
        p = self.party
        tag = "rep3.onehot"
        if self.id == 0:
            ra = p.prg_own.ring((m,)) % np.uint64(N)
            oh = np.zeros((m, N), RING)
            oh[np.arange(m), ra.astype(np.int64)] = 1
            x0 = p.prg_prev.ring((m, N))
            p.send(1, oh - x0, tag + ".in", offline=True)
            t = p.prg_next.ring((m,))
            p.send(2, ra - t, tag + ".r", offline=True)
            return self.from_pair(None, (m, N), tag + ".back", offline=True), np.zeros(m, RING)
        if self.id == 1:
            x1 = p.recv(0, tag + ".in", (m, N))
            rb = p.prg_next.ring((m,)) % np.uint64(N)
            data = self.from_pair(roll_rows(x1, rb), (m, N), tag + ".back", offline=True)
            return data, p.prg_prev.ring((m,)) + rb
        x0 = p.prg_next.ring((m, N))
        rb = p.prg_prev.ring((m,)) % np.uint64(N)
        data = self.from_pair(roll_rows(x0, rb), (m, N), tag + ".back", offline=True)
        return data, p.recv(0, tag + ".r", (m,))


def _cross_matmul(a, b):
    """x_i y_i + x_i y_{i+1} + x_{i+1} y_i for matrices, summing the *smaller* operand's
    slots: (a0 + a1) @ b0 + a0 @ b1 reads a big right operand (a weight) once per slot
    instead of materialising b0 + b1 (one pass less over every weight per token)."""
    if a[0].size <= b[0].size:
        return ring_matmul(a[0] + a[1], b[0]) + ring_matmul(a[0], b[1])
    return ring_matmul(a[0], b[0] + b[1]) + ring_matmul(a[1], b[0])


# -- message tags ---------------------------------------------------------------------------
#: Narration of the messages of rep3, per tag (or ``*`` pattern): ``title``; ``local``,
#: what the parties compute for it; ``learns``, why the receiver learns only ``kind``
#: ("random": masked, the default; "dealer", "shape", "output", "key", "pattern").
#: ``mpcache explain`` and the trace viewer collect these tables
#: (:data:`mpcache.apps.explain.TAGS`); the tags are the strings the code above sends.
TAGS = {
    "rep3.share": dict(
        title="input sharing",
        local="owner o sets x_{o+2} = 0, draws x_o from its key with P_{o-1} (which "
              "derives the same x_o) and sends x_{o+1} = x - x_o to P_{o+1}",
        learns="x - x_o, where x_o comes from a key the receiver does not hold"),
    "rep3.share.shape": dict(
        title="input shape",
        local="owner o tells P_{o+2} the shape; P_{o+2} holds (x_{o+2}, x_o) = (0, F(k))",
        learns="the shape of the input",
        kind="shape"),
    "rep3.reveal": dict(
        title="reveal",
        local="P_i sends its second component x_{i+1} to P_{i-1}; each party adds the "
              "three components x_0 + x_1 + x_2",
        learns="the component it was missing, so it reconstructs x",
        kind="output"),
    "rep3.mul": dict(
        title="ring product: re-sharing",
        local="each P_i computes z_i = x_i*y_i + x_i*y_{i+1} + x_{i+1}*y_i + alpha_i, "
              "where alpha_i = F(k_i) - F(k_{i-1}) is a zero-sharing (no communication), "
              "and sends z_i to P_{i-1}",
        learns="z_{i+1}, masked by alpha_{i+1}, which needs key k_{i+1} the receiver does "
               "not hold"),
    "rep3.matmul": dict(
        title="ring matmul: re-sharing",
        local="each P_i computes z_i = X_i@(Y_i + Y_{i+1}) + X_{i+1}@Y_i + alpha_i (local "
              "matmuls, zero-sharing alpha from the keys) and sends z_i to P_{i-1}: the "
              "cost is the OUTPUT size",
        learns="z_{i+1}, masked by alpha_{i+1} (key k_{i+1}, not held by the receiver)"),
    "rep3.*.deal": dict(
        title="truncation mask (dealt by P2)",
        local="P2 derives the mask r = F(k_2) + F(k_1) (a half from each key it holds), "
              "and deals [r >> f] and [msb(r)]: P0's parts come from the P0-P2 key, P1's "
              "parts (s - s0, m - m0) are sent",
        learns="s - s0 and m - m0, masked by s0, m0 from the P0-P2 key P1 does not hold",
        kind="dealer"),
    "rep3.mul_trunc.open": dict(
        title="fused product + masked opening c = x*y + 2^62 + r",
        local="every P_i computes its 3-additive product part z_i (cross terms + "
              "zero-sharing); P2 sends z_2 to P0 and P1; P0 sends z_0 + 2^62 + r_a, P1 "
              "sends z_1 + r_b (r_a from the P0-P2 key, r_b from the P1-P2 key); P0, P1 "
              "add everything: c = x*y + 2^62 + r",
        learns="from P2: z_2, masked by its zero-share alpha_2 (needs the key the "
               "receiver lacks); from the other opener: a value masked by its half of r; "
               "so c is uniform"),
    "rep3.matmul_trunc.open": dict(
        title="fused matmul + masked opening c = X@Y + 2^62 + r",
        local="as for mul_trunc, with local matmuls: P2 sends Z_2 to P0 and P1, P0 and P1 "
              "exchange their masked parts and add up c",
        learns="masked values only: c = X@Y + 2^62 + r with r unknown to each opener"),
    "rep3.trunc.open": dict(
        title="masked opening c = x + 2^62 + r",
        local="P0 sends x_0 + 2^62 + r_a to P1, P1 sends x_2 + r_b to P0 (both know x_1); "
              "each adds c = x + 2^62 + r",
        learns="a value masked by the sender's half of r, which the receiver does not hold"),
    "rep3.*.reshare": dict(
        title="back to replicated form",
        local="from c, P0 and P1 compute additive shares yA + yB = x >> f (the wrap bit "
              "is (1 - msb(c)) * [msb(r)]); y0 = F(k_2); P0 sends y1 = yA - y0 - rho to "
              "P1 and P1 sends y2 = yB + rho to P2, rho = F(k_0)",
        learns="P1 gets y1, masked by y0 (key k_2, not P1's); P2 gets y2, masked by rho "
               "(key k_0, not P2's)"),
    "rep3.bshare": dict(
        title="boolean (XOR) input sharing",
        local="owner o draws b_o from its key with P_{o-1} and sends b_{o+1} = b ^ b_o to "
              "P_{o+1}",
        learns="b ^ b_o, where b_o comes from a key the receiver does not hold"),
    "rep3.bshare.shape": dict(
        title="boolean input shape",
        local="owner o tells P_{o+2} the shape",
        learns="the shape of the input",
        kind="shape"),
    "rep3.and": dict(
        title="AND of XOR-shared words (ABY3)",
        local="each P_i computes z_i = x_i&y_i ^ x_i&y_{i+1} ^ x_{i+1}&y_i ^ alpha_i "
              "(alpha: an XOR zero-sharing from the keys) and sends z_i to P_{i-1}",
        learns="z_{i+1}, masked by alpha_{i+1} (key k_{i+1}, not held by the receiver)"),
    "rep3.from_pair": dict(
        title="back to replicated form (from the bit engine's 2-of-2 between P1 and P2)",
        local="x2 = F(k_1) and rho = F(k_1) (P1-P2 key); P1 sends x1 = yA - x2 + rho, P2 "
              "sends x0 = yB - rho, both to P0",
        learns="x0 and x1, whose sum x - x2 is masked by x2 from the P1-P2 key P0 does "
               "not hold"),
    "rep3.bfrom_pair": dict(
        title="back to replicated XOR form (from the bit engine's 2-of-2)",
        local="as from_pair with XOR: P1 sends y_A ^ x2 ^ rho, P2 sends y_B ^ rho to P0",
        learns="words masked by x2, rho from the P1-P2 key P0 does not hold"),
    "rep3.onehot.in": dict(
        title="random one-hot preprocessing: P0 shares onehot(r_a)",
        local="P0 (random r_a) sends onehot(r_a) - x0 to P1, x0 from the P0-P2 key",
        learns="a one-hot masked by x0 from a key P1 does not hold",
        kind="dealer"),
    "rep3.onehot.r": dict(
        title="random one-hot preprocessing: P0's rotation r_a, masked",
        local="P0 sends r_a - t to P2, t from the P0-P1 key",
        learns="r_a - t, masked by t from a key P2 does not hold",
        kind="dealer"),
    "rep3.onehot.back": dict(
        title="random one-hot preprocessing: P1, P2 rotate by r_b and re-share to P0",
        local="P1 and P2 rotate their 2-of-2 one-hot by their common r_b and send the "
              "re-sharing to P0 (as from_pair): nobody knows r = r_a + r_b",
        learns="values masked by the P1-P2 key P0 does not hold",
        kind="dealer"),
}
