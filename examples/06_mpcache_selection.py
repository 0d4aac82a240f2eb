"""06 - MPCache's cluster-level selection vs token-level selection, on secrets.

Run: python examples/06_mpcache_selection.py
Needs: SecretTensor.top_k, SecretTensor.max, mpcache.gather

At each decoding step MPCache picks which cached tokens the query attends to, without
learning which (only how many: k is public):

1. once per cluster of c neighbouring tokens (when it fills up): per-dimension key
   extrema r_max, r_min, and the linearised bound  b = a r_max + (1 - a) r_min  (a = 0.6);
2. per step, ONE matmul scores every cluster:  s = q . b  (no comparison at all);
3. top-k over the C = T / c clusters gives a secret one-hot [k, C];
4. one matmul gathers whole clusters:  onehot @ K.reshape(C, c*d)  (cost: the output).

Token-level selection does top-(k*c) over all T tokens and gathers T-row one-hots: the
comparisons scale with T instead of T / c, and the one-hot is c times taller.
"""
import numpy as np

import mpcache

rng = np.random.default_rng(0)
T, d, c, k, a = 256, 64, 16, 4, 0.6
C = T // c
q = rng.normal(0, 1, (1, d))
K = rng.normal(0, 1, (T, d))
K[5 * c:6 * c] += 0.8 * q          # make a few clusters clearly relevant
K[11 * c:12 * c] += 0.5 * q
V = rng.normal(0, 1, (T, d))


def cluster_job(p):
    Qs = p.share(q if p.id == 0 else None, owner=0)
    Ks = p.share(K if p.id == 0 else None, owner=0)
    Vs = p.share(V if p.id == 0 else None, owner=0)
    with p.scope("bounds_once"):               # amortised: once per full cluster
        Kc = Ks.reshape(C, c, d).transpose(0, 2, 1)          # [C, d, c]
        rmax = Kc.max(axis=-1)                               # [C, d]
        rmin = -((-Kc).max(axis=-1))
        bracket = rmax * a + rmin * (1 - a)                  # public reals: truncations
    with p.scope("step"):
        with p.scope("score"):
            s = Qs @ bracket.T                               # [1, C]: one matmul
        with p.scope("topk"):
            oh = s.reshape(C).top_k(k)                       # [k, C] secret one-hot
        with p.scope("gather"):
            Kk = mpcache.gather(oh, Ks.reshape(C, c * d)).reshape(k * c, d)   # oh @ K
            Vk = mpcache.gather(oh, Vs.reshape(C, c * d)).reshape(k * c, d)
    return p.reveal(oh, to=0), p.reveal(Kk, to=0), p.reveal(Vk, to=0)


def token_job(p):
    Qs = p.share(q if p.id == 0 else None, owner=0)
    Ks = p.share(K if p.id == 0 else None, owner=0)
    Vs = p.share(V if p.id == 0 else None, owner=0)
    with p.scope("step"):
        with p.scope("score"):
            s = Qs @ Ks.T                                    # [1, T]
        with p.scope("topk"):
            oh = s.reshape(T).top_k(k * c)                   # [k*c, T]
        with p.scope("gather"):
            Kk, Vk = mpcache.gather(oh, Ks), mpcache.gather(oh, Vs)           # [k*c, d]
    return p.reveal(oh, to=0), p.reveal(Kk, to=0), p.reveal(Vk, to=0)


# the plaintext reference of the cluster choice (same bound, same top-k contract)
Kcl = K.reshape(C, c, d)
bnd = a * Kcl.max(1) + (1 - a) * Kcl.min(1)
want = np.sort(np.argsort(-(q @ bnd.T)[0], kind="stable")[:k])

print(f"T={T} tokens, d={d}, clusters of c={c} (C={C}), keep k={k} clusters = {k * c} tokens")
print(f"{'':6} {'selection':9} {'part':7} {'bytes/party':>12} {'rounds':>6} {'offline B':>10} "
      f"{'ms':>8}")
for protocol in ("rep3", "add2"):
    rc = mpcache.Session(protocol).run(cluster_job)
    rt = mpcache.Session(protocol).run(token_job)
    oh = np.asarray(rc.output[0])
    got = np.argmax(oh, axis=-1)
    assert np.array_equal(got, want), (got, want)
    rows = np.concatenate([np.arange(i * c, (i + 1) * c) for i in want])
    assert np.max(np.abs(rc.output[1] - K[rows])) < 1e-3
    for name, res, parts in (("cluster", rc, ("score", "topk", "gather")),
                             ("token", rt, ("score", "topk", "gather"))):
        for part in parts:
            s = res.scope("step/" + part)
            print(f"{protocol:6} {name:9} {part:7} {s['bytes_sent']:>12,} {s['rounds']:>6} "
                  f"{s['offline_bytes_sent']:>10,} {s['seconds'] * 1e3:>8.1f}")
        s = res.scope("step")
        print(f"{protocol:6} {name:9} {'STEP':7} {s['bytes_sent']:>12,} {s['rounds']:>6} "
              f"{s['offline_bytes_sent']:>10,} {s['seconds'] * 1e3:>8.1f}")
    b = rc.scope("bounds_once")
    ratio = rt.scope("step")["bytes_sent"] / max(1, rc.scope("step")["bytes_sent"])
    print(f"{protocol:6} cluster bounds (once per cluster, amortised): {b['bytes_sent']:,} "
          f"B/party, {b['rounds']} rounds.  Token-level step / cluster step bytes: {ratio:.1f}x")
print(f"selected clusters {want.tolist()} (the secret one-hot, revealed here only to check)")
