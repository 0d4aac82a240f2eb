"""Additive 2PC between P0 and P1 with P2 as a dealer of correlated randomness.

References: Beaver, "Efficient Multiparty Protocols Using Circuit Randomization",
CRYPTO 1991 (multiplication triples); matrix triples as in SecureML (Mohassel, Zhang,
S&P 2017, Sec. 4.1); CrypTen's trusted-third-party mode is the same trust model.
Cost formulas: docs/protocols.md.

Sharing: x = x0 + x1, P0 holds x0, P1 holds x1 (``data`` has one slot).  P2 holds no
shares (a zero-memory phantom that tracks shapes) and never sees data: it only sends
randomness, which is counted as *offline* traffic.  Seed compression: every dealt value
P0 needs is drawn from the P0-P2 key, every value P1 needs except the correlated one
(c1 = ab - c0, [s], [m]) from the P1-P2 key; so the dealer sends one value per product.

Under ``Session.run`` the dealer is a forked process of its own by default
(``Session.processes``): its preprocessing runs beside the online parties instead of
taking their interpreter lock; the protocol is the same either way.

What each party learns: P0 and P1 see only openings masked by dealer randomness
(uniform), plus outputs at ``reveal``.  P2 sees nothing but its own randomness and
whatever is explicitly revealed to it.  Security needs P2 not to collude with P0 or P1.
"""
from __future__ import annotations

import numpy as np

from ..kernels import matmul_shape, ring_matmul
from ..ring import RING
from . import truncation as tr
from .base import ARITH, XOR, Group, Protocol, ProtocolError, phantom
from .persistent import fresh_lines

DEALER = 2


class Add2(Protocol):
    name = "add2"
    slots = 1
    products_open_operands = True

    def __init__(self, party):
        super().__init__(party)
        self.active = party.id != DEALER

    # -- key helpers: the P0-P1 key is k_0; P2 shares k_2 with P0 and k_1 with P1 ------------
    def _prg_dealer(self):
        """At P0/P1: the stream shared with the dealer."""
        return self.party.prg_prev if self.id == 0 else self.party.prg_next

    def _prg_peer(self):
        """At P0/P1: the stream shared with the other data party."""
        return self.party.prg_next if self.id == 0 else self.party.prg_prev

    # -- sharing ------------------------------------------------------------------------
    def share(self, x, owner, g: Group = ARITH):
        """Owner o in {0,1} keeps x - r and the peer keeps r (r from their common key):
        no share bytes move; only the shape (8 bytes/dim) goes to the two others.
        ``g=XOR``: the same over XOR (x ^ r)."""
        self.check_owner(owner)
        if owner == DEALER:
            raise ProtocolError("in add2 the dealer P2 holds no data; share from P0 or P1")
        p = self.party
        tag = f"add2.{g.prefix}share.shape"
        if self.id == owner:
            x = np.asarray(x, dtype=RING)
            for other in (1 - owner, DEALER):
                self.send_shape(p, other, x.shape, tag)
            return g.split(x, self._prg_peer().ring(x.shape))[None]
        shape = self.recv_shape(p, owner, tag)
        if self.id == DEALER:
            return phantom(shape, 1)
        return self._prg_peer().ring(shape)[None]

    def reveal(self, data, to, g: Group = ARITH):
        """P0 and P1 send their shares to whoever must learn the value (8 bytes/value per
        recipient).  Revealing to all includes the dealer, so every party's program sees
        the same public values.

        When the dealer is a recipient, P0 sends ``x0 + s`` and P1 ``x1 - s`` (XOR: both
        ``^ s``) with s from their common key: the dealer must learn the value only.  Raw
        shares would tell it more, because it knows the randomness inside them: P0's
        share of a Beaver product is ``c0 + e b0 + a0 f + e f`` with ``a0, b0, c0``
        dealt by P2, so with the product it solves for both factors.  No extra bytes."""
        p = self.party
        tag = f"add2.{g.prefix}reveal"
        targets = [0, 1, 2] if to is None else [to]
        if self.active:
            mine = data[0]
            if DEALER in targets:
                s = self.reveal_mask(mine.shape)
                mine = g.combine(mine, s) if self.id == 0 else g.split(mine, s)
            for t in targets:
                if t != self.id:
                    p.send(t, mine, tag)
        if self.id not in targets:
            return None
        parts = [mine] if self.active else []
        for src in (0, 1):
            if src != self.id:
                parts.append(p.recv(src, tag, data.shape[1:]))
        return g.combine(parts[0], parts[1])

    def reveal_mask(self, shape) -> np.ndarray:
        """At P0/P1: the mask that hides each half of an opening from the dealer."""
        return self._prg_peer().ring(shape)

    # -- local --------------------------------------------------------------------------
    def add_public(self, data, c, g: Group = ARITH):
        """P0 adds (g=XOR: xors) the public ``c`` into its share."""
        shape = np.broadcast_shapes(data.shape[1:], np.shape(c))
        if not self.active:
            return phantom(shape, 1)
        out = np.array(np.broadcast_to(data, (1,) + shape))
        if self.id == 0:
            out[0] = g.combine(out[0], c)
        return out

    # -- Beaver multiplication ---------------------------------------------------------------
    def _triple(self, sa, sb, sc, op):
        """(a, b, c) with c = op(a, b) of shape ``sc``: a, b and c0 come from the dealer
        keys; only c1 = op(a, b) - c0 is sent (offline, to P1)."""
        p = self.party
        if self.id == DEALER:
            a0, b0 = p.prg_next.ring(sa), p.prg_next.ring(sb)      # key k_2 (with P0)
            a1, b1 = p.prg_prev.ring(sa), p.prg_prev.ring(sb)      # key k_1 (with P1)
            c0 = p.prg_next.ring(sc)
            p.send(1, op(a0 + a1, b0 + b1) - c0, "add2.triple", offline=True)
            return None
        g = self._prg_dealer()
        a, b = g.ring(sa), g.ring(sb)
        c = g.ring(sc) if self.id == 0 else p.recv(DEALER, "add2.triple", sc)
        return a, b, c

    def _beaver(self, x, y, op, tag, sc):
        p = self.party
        sa, sb = x.shape[1:], y.shape[1:]
        if self.id == DEALER:
            self._triple(sa, sb, sc, op)
            return None
        a, b, c = self._triple(sa, sb, sc, op)
        e_own, f_own = x[0] - a, y[0] - b
        other = 1 - self.id
        p.send(other, np.concatenate([e_own.reshape(-1), f_own.reshape(-1)]), tag)
        ef = p.recv(other, tag, (e_own.size + f_own.size,))
        e = e_own + ef[:e_own.size].reshape(e_own.shape)
        f = f_own + ef[e_own.size:].reshape(f_own.shape)
        z = c + op(e, b) + op(a, f)
        if self.id == 0:
            z = z + op(e, f)
        return z

    def _out_shape(self, x, y, matmul):
        sx, sy = x.shape[1:], y.shape[1:]
        if not matmul:
            return np.broadcast_shapes(sx, sy)
        return matmul_shape(sx, sy)

    def _product(self, x, y, matmul):
        op = ring_matmul if matmul else np.multiply
        shape = self._out_shape(x, y, matmul)
        return self._beaver(x, y, op, "add2.matmul" if matmul else "add2.mul", shape), shape

    def mul(self, a, b):
        z, shape = self._product(a, b, False)
        return phantom(shape, 1) if z is None else z[None]

    def matmul(self, a, b):
        z, shape = self._product(a, b, True)
        return phantom(shape, 1) if z is None else z[None]

    # -- truncation (truncation.py): one opening between P0 and P1 ------------------------------
    def _trunc_value(self, z, shape, f, tag="add2.trunc"):
        p = self.party
        if self.id == DEALER:
            s0, m0, s1, m1 = tr.dealer_mask(p.prg_next, p.prg_prev, shape, f)
            p.send(1, np.stack([s1, m1]), tag + ".deal", offline=True)
            return phantom(shape, 1)
        if self.id == 0:
            ra, s_part, m_part = tr.p0_mask(p.prg_prev, shape)
            u = tr.offset(z + ra)
        else:
            u = z + tr.p1_mask(p.prg_next, shape)
            sm = p.recv(DEALER, tag + ".deal", (2,) + tuple(shape))
            s_part, m_part = sm[0], sm[1]
        other = 1 - self.id
        p.send(other, u, tag + ".open")
        c = u + p.recv(other, tag + ".open", shape)
        return tr.opener_share(c, s_part, m_part, f, self.id == 0)[None]

    def trunc(self, a, f):
        """1 round, 8 bytes/value for P0 and P1; dealer: 16 bytes/value offline."""
        return self._trunc_value(None if self.id == DEALER else a[0], a.shape[1:], f)

    def mul_trunc(self, a, b, f):
        """Beaver product then truncation: 2 rounds (the opening needs the product)."""
        z, shape = self._product(a, b, False)
        return self._trunc_value(z, shape, f)

    def matmul_trunc(self, a, b, f):
        z, shape = self._product(a, b, True)
        return self._trunc_value(z, shape, f)

    # -- persistent operands: open W - B once, reuse B for every product -------------------
    # A right operand that is multiplied many times (a weight matrix at every token, the
    # KV-cache prefix at every decoding step) gets a fixed mask B; F = W - B is opened once.
    # Each later product x @ W needs a fresh left mask A and C = A @ B from the dealer, and
    # opens only e = x - A: online bytes drop from 8(mk + kq) to 8mk per party.  Batched
    # operands [..., k, q] work the same way (numpy matmul broadcasting).
    # What each party learns: P0/P1 see F = W - B, uniform because B is uniform, unknown to
    # them (each knows only its own share of B) and never used to mask any other value (a
    # view of W -- a slice, a reshape -- carries the matching part of the SAME B and W, so
    # every product with it is still a product with W); and e = x - A, uniform because A is
    # fresh.  P2 sees nothing but its own randomness.  (Matrix-triple reuse, as in
    # SecureML's offline phase.)
    # Partial coverage (``state.fresh``: elements not persisted, e.g. rows appended to the
    # KV cache after prefill): those get a fresh mask b per product and W - b is opened for
    # them alone, in the same message as e -- an ordinary Beaver opening for that part.
    def persist(self, w):
        """Arrays with the share layout: P0/P1 {"B": own share of B, "F": W - B}; P2 {"B"}."""
        p = self.party
        shape = w.shape[1:]
        if self.id == DEALER:
            return {"B": (p.prg_next.ring(shape) + p.prg_prev.ring(shape))[None]}
        b = self._prg_dealer().ring(shape)
        other = 1 - self.id
        p.send(other, w[0] - b, "add2.persist.open")
        f = (w[0] - b) + p.recv(other, "add2.persist.open", shape)
        return {"B": b[None], "F": f[None]}

    def _fresh_part(self, b, fresh, w):
        """B with its fresh (not persisted) elements replaced by a new mask b (dealt like any
        Beaver mask), and at P0/P1 this party's part of the opening W - b there.  The
        general path (any pattern of fresh elements): copies B."""
        p = self.party
        nf = int(fresh.sum())
        b = np.array(b)
        if self.id == DEALER:
            b[fresh] = p.prg_next.ring((nf,)) + p.prg_prev.ring((nf,))
            return b, None
        b[fresh] = self._prg_dealer().ring((nf,))
        return b, w[fresh] - b[fresh]

    def matmul_persistent(self, x, w, state, f_bits=None, twin_bits=None):
        """x @ W with W persistent (``state``: mpcache.persistent.Persisted); truncates by
        ``f_bits`` if given (fixed x fixed).  Elements of W marked fresh in ``state`` are
        masked and opened now (8 bytes each per party), the rest not at all.
        ``twin_bits``: also the product truncated by ``twin_bits`` (a second truncation
        of the same local product, a branch in the same round: mpcache.branches);
        returns both."""
        p = self.party
        sx = x.shape[1:]
        sz = matmul_shape(sx, w.shape[1:])
        fresh = state.fresh_mask()
        B = state.arrays["B"][0]
        lines = None if fresh is None else fresh_lines(fresh)
        if self.id == DEALER:
            a = p.prg_next.ring(sx) + p.prg_prev.ring(sx)
            if fresh is not None and lines is None:
                B, _ = self._fresh_part(B, fresh, None)
            c = ring_matmul(a, B)
            if lines is not None:                 # the same draws as _fresh_part's
                shape = lines.take(B).shape
                bj = p.prg_next.ring(shape) + p.prg_prev.ring(shape)
                c = lines.patch(c, [(a, B, bj)])
            c0 = p.prg_next.ring(sz)
            p.send(1, c - c0, "add2.ptriple", offline=True)
            z = None
        else:
            Fm = state.arrays["F"][0]
            g = self._prg_dealer()
            a = g.ring(sx)
            f_own = bj = None
            if lines is not None:
                wj = lines.take(w[0])
                bj = g.ring(wj.shape)
                f_own = (wj - bj).reshape(-1)
            elif fresh is not None:
                B, f_own = self._fresh_part(B, fresh, w[0])
            c = g.ring(sz) if self.id == 0 else p.recv(DEALER, "add2.ptriple", sz)
            e_own = x[0] - a
            other = 1 - self.id
            if f_own is None:
                p.send(other, e_own, "add2.pmatmul")
                e = e_own + p.recv(other, "add2.pmatmul", sx)
            else:
                p.send(other, np.concatenate([e_own.reshape(-1), f_own]), "add2.pmatmul")
                ef = p.recv(other, "add2.pmatmul", (e_own.size + f_own.size,))
                e = e_own + ef[:e_own.size].reshape(sx)
                f_new = f_own + ef[e_own.size:]
                if lines is None:
                    Fm = np.array(Fm)
                    Fm[fresh] = f_new
            # P0 adds e @ F: folded into one product with F, (a + e) @ F
            ae = a + e if self.id == 0 else a
            z = c + ring_matmul(e, B) + ring_matmul(ae, Fm)
            if lines is not None:    # the fresh lines' terms with their new b and W - b
                z = lines.patch(z, [(e, B, bj), (ae, Fm, f_new.reshape(bj.shape))], c)
        if f_bits is None:
            return phantom(sz, 1) if z is None else z[None]
        if twin_bits is None:
            return self._trunc_value(z, sz, f_bits)
        return tuple(p.parallel(lambda: self._trunc_value(z, sz, f_bits),
                                lambda: self._trunc_value(z, sz, twin_bits)))

    # =====================================================================================
    # Boolean primitives (see pair.py, compare_core.py, mpcache/booltensor.py and
    # docs/nonlinear-compare.md).  XOR sharing b = b0 ^ b1 between P0 and
    # P1; the dealer P2 holds a phantom and deals boolean triples (seed-compressed).
    # =====================================================================================
    def bool_and(self, a, b):
        """Boolean Beaver triple on words: open e = x ^ a, f = y ^ b (16 bytes/word per
        party, 1 round); the dealer sends c1 = (a & b) ^ c0 (8 bytes/word offline)."""
        p = self.party
        shape = np.broadcast_shapes(a.shape[1:], b.shape[1:])
        if self.id == DEALER:
            a0, b0 = p.prg_next.ring(shape), p.prg_next.ring(shape)
            a1, b1 = p.prg_prev.ring(shape), p.prg_prev.ring(shape)
            c0 = p.prg_next.ring(shape)
            p.send(1, ((a0 ^ a1) & (b0 ^ b1)) ^ c0, "add2.btriple", offline=True)
            return phantom(shape, 1)
        g = self._prg_dealer()
        ta, tb = g.ring(shape), g.ring(shape)
        tc = g.ring(shape) if self.id == 0 else p.recv(DEALER, "add2.btriple", shape)
        x = np.broadcast_to(a[0], shape)
        y = np.broadcast_to(b[0], shape)
        other = 1 - self.id
        p.send(other, np.stack([x ^ ta, y ^ tb]), "add2.and")
        ef = p.recv(other, "add2.and", (2,) + shape)
        e, f = (x ^ ta) ^ ef[0], (y ^ tb) ^ ef[1]
        z = tc ^ (e & tb) ^ (ta & f)
        if self.id == 0:
            z = z ^ (e & f)
        return z[None]

    def a2b_summands(self, data):
        """x = x0 + x1: (x0 at P0, 0 at P1) and (0 at P0, x1 at P1) are XOR sharings."""
        shape = data.shape[1:]
        if not self.active:
            return phantom(shape, 1), phantom(shape, 1)
        z = np.zeros((1,) + shape, RING)
        return (np.array(data), z) if self.id == 0 else (z, np.array(data))

    # -- the bit engine (pair.Pair): P0, P1 data parties, P2 dealer ----------------------
    def pair_roles(self):
        return 0, 1, DEALER

    def to_pair(self, data, g: Group = ARITH):
        """Native sharing = the 2-of-2 pair form (P0, P1), in either group."""
        if not self.active:
            return np.zeros(data.shape[1:], RING)
        return np.array(data[0])

    def bool_to_pair(self, data):
        return self.to_pair(data, XOR)

    def from_pair(self, y, shape, tag=None, offline=False, g: Group = ARITH):
        """The pair form is add2's native sharing: no communication, either group."""
        if not self.active:
            return phantom(tuple(shape), 1)
        return np.asarray(y, dtype=RING).reshape(tuple(shape))[None]

    def bool_from_pair(self, y, shape, tag=None):
        return self.from_pair(y, shape, tag, g=XOR)

    def random_onehot(self, m, N):
        """Dealer preprocessing for one-hot vectors: ``m`` one-hot rows of length N of a
        random r known only to P2, additively shared (P0's part from the P0-P2 key), and
        shares of r.  P2 sends 8(mN + m) bytes to P1, offline."""
        p = self.party
        if self.id == DEALER:
            r = p.prg_own.ring((m,)) % np.uint64(N)
            oh = np.zeros((m, N), RING)
            oh[np.arange(m), r.astype(np.int64)] = 1
            a0, r0 = p.prg_next.ring((m, N)), p.prg_next.ring((m,))
            p.send(1, np.concatenate([(oh - a0).reshape(-1), r - r0]), "add2.onehot",
                   offline=True)
            return phantom((m, N), 1), np.zeros(m, RING)
        if self.id == 0:
            return p.prg_prev.ring((m, N))[None], p.prg_prev.ring((m,))
        buf = p.recv(DEALER, "add2.onehot", (m * N + m,))
        return buf[:m * N].reshape(m, N)[None], buf[m * N:]


# -- message tags ---------------------------------------------------------------------------
#: Narration of the messages of add2, per tag (or ``*`` pattern): ``title``; ``local``,
#: what the parties compute for it; ``learns``, why the receiver learns only ``kind``
#: ("random": masked, the default; "dealer", "shape", "output", "key", "pattern").
#: ``mpcache explain`` and the trace viewer collect these tables
#: (:data:`mpcache.apps.explain.TAGS`); the tags are the strings the code above sends.
TAGS = {
    "add2.share.shape": dict(
        title="input sharing (only the shape moves)",
        local="owner o keeps x - r, the other data party derives r from the P0-P1 key; "
              "the dealer P2 only learns the shape",
        learns="the shape of the input",
        kind="shape"),
    "add2.reveal": dict(
        title="reveal",
        local="P0 and P1 send their additive shares to every party that must learn x; "
              "when the dealer P2 is one of them, P0 sends x0 + s and P1 x1 - s (s from "
              "the P0-P1 key): P2 knows the triples inside raw shares and would learn "
              "more than x",
        learns="the other half, so it reconstructs x = x0 + x1 (and nothing else)",
        kind="output"),
    "add2.triple": dict(
        title="Beaver triple (dealt by P2)",
        local="P2 draws a0, b0, c0 from the P0-P2 key and a1, b1 from the P1-P2 key, and "
              "sends c1 = op(a0 + a1, b0 + b1) - c0 to P1 (P0 derives its parts itself)",
        learns="c1, masked by c0 from the P0-P2 key P1 does not hold",
        kind="dealer"),
    "add2.mul": dict(
        title="Beaver product: open e = x - a, f = y - b",
        local="P_i sends e_i = x_i - a_i and f_i = y_i - b_i; then z_i = c_i + e*b_i + "
              "a_i*f (+ e*f at P0), no more communication",
        learns="e_j, f_j, masked by the dealer's a_j, b_j (from a key the receiver lacks)"),
    "add2.matmul": dict(
        title="matrix triple: open E = X - A, F = Y - B",
        local="P_i sends E_i = X_i - A_i and F_i = Y_i - B_i; then Z_i = C_i + E@B_i + "
              "A_i@F (+ E@F at P0): the cost is the INPUT sizes",
        learns="E_j, F_j, masked by dealer matrices A_j, B_j (from a key the receiver "
               "lacks)"),
    "add2.*.deal": dict(
        title="truncation mask (dealt by P2)",
        local="P2 derives r = F(k_2) + F(k_1) and deals [r >> f], [msb(r)]: P0's parts "
              "from the P0-P2 key, P1's parts sent",
        learns="s - s0 and m - m0, masked by s0, m0 from the P0-P2 key P1 does not hold",
        kind="dealer"),
    "add2.*.open": dict(
        title="masked opening c = x + 2^62 + r",
        local="P0 sends x_0 + 2^62 + r_a, P1 sends x_1 + r_b; both add c and compute "
              "their additive share of x >> f locally (1 round in add2)",
        learns="a value masked by the sender's half of r, which the receiver does not hold"),
    "add2.persist.open": dict(
        title="persistent operand (weight, KV-cache prefix): open W - B once",
        local="each data party sends W_i - B_i for a dealer mask B used with this weight "
              "only",
        learns="W_j - B_j, masked by B_j (from a key the receiver lacks)"),
    "add2.ptriple": dict(
        title="per-product triple for a persistent weight (dealt by P2)",
        local="P2 sends C1 = A@B - C0 to P1 for a fresh left mask A",
        learns="C1, masked by C0 from the P0-P2 key",
        kind="dealer"),
    "add2.pmatmul": dict(
        title="persistent-operand matmul: open E = X - A only",
        local="P_i sends E_i = X_i - A_i (plus W_i - b_i for elements not persisted, e.g. "
              "KV rows appended after prefill); Z_i = C_i + E@B_i + A_i@F (+ E@F at P0)",
        learns="E_j, masked by the fresh dealer mask A_j (and W_j - b_j by a fresh b_j)"),
    "add2.bshare.shape": dict(
        title="boolean input sharing (only the shape moves)",
        local="owner keeps b ^ r, the other data party derives r from the P0-P1 key",
        learns="the shape of the input",
        kind="shape"),
    "add2.btriple": dict(
        title="boolean Beaver triple (dealt by P2)",
        local="P2 sends c1 = (a0 ^ a1) & (b0 ^ b1) ^ c0 to P1 (everything else from the "
              "keys)",
        learns="c1, masked by c0 from the P0-P2 key",
        kind="dealer"),
    "add2.and": dict(
        title="AND with a boolean Beaver triple: open e = x ^ a, f = y ^ b",
        local="P_i sends x_i ^ a_i and y_i ^ b_i; z = c ^ e&b ^ a&f (^ e&f at P0), locally",
        learns="x_j ^ a_j, y_j ^ b_j, masked by dealer bits the receiver lacks"),
    "add2.onehot": dict(
        title="random one-hot preprocessing (dealt by P2)",
        local="P2 sends P1 its shares of onehot(r) and of r (P0's from the P0-P2 key)",
        learns="shares masked by values from the P0-P2 key",
        kind="dealer"),
}
