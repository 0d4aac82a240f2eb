"""07 - tampering: what "semi-honest" means, and what a checked reveal catches.

Run: python examples/07_tamper.py

mpcache's protocols are secure against *semi-honest* parties: each follows the protocol
and only tries to learn from what it sees.  A party that changes what it sends is outside
that model, and this example shows what happens.  ``mpcache.testing.tamper`` alters one
party's outgoing messages (by tag) in every session run inside the ``with`` block.

1. Additive attack, rep3 and add2: P1 adds 2^36 to its masked opening in the truncation
   of a product.  Every party accepts x*y + 1.0; nothing detects it.
2. An inconsistent sharing, rep3: P1 adds 2^18 to the re-share message it sends to P2, so
   P1 and P2 hold different copies of one share component.  A plain reveal still
   "works": P2 outputs x*y + 1.0, P0 and P1 output x*y.
3. The checked reveal (``p.reveal(z, checked=True)``): both holders of every component
   send it (the second one a SHA-256), the receiver compares, and after one round of
   complaints every party aborts, naming the pair of parties that disagree.
4. What the check does not catch: attack 1 keeps the sharing consistent (the tampered
   opening feeds both openers' shares), so the checked reveal accepts the wrong value.
   This is not malicious security; see docs/teaching.md, "Tampering".
"""
import numpy as np

import mpcache
from mpcache.checked import InconsistentShares
from mpcache.testing import add_fixed, tamper

x = np.array([1.5, -2.0, 3.25, 0.5])
y = np.array([2.0, 4.0, -1.0, -3.0])


def job(p, checked=False):
    a = p.share(x if p.id == 0 else None, owner=0)
    b = p.share(y if p.id == 1 else None, owner=1)
    with p.scope("mul"):
        z = a * b
    with p.scope("reveal"):
        return p.reveal(z, checked=checked)


def show(label, res):
    outs = [np.round(o, 4).tolist() for o in res.outputs]
    same = all(o == outs[0] for o in outs)
    print(f"  {label:<44} " + (f"all parties: {outs[0]}" if same else
                               "  ".join(f"P{i}: {o}" for i, o in enumerate(outs))))


print(f"x * y = {(x * y).tolist()}\n")
print("1. additive attack on the truncation's masked opening (P1 adds 2^36 = 1.0 * 2^2f):")
for proto, tag in (("rep3", "rep3.mul_trunc.open"), ("add2", "add2.trunc.open")):
    show(f"{proto}, honest", mpcache.Session(proto, seed=1).run(job))
    with tamper(party=1, tag=tag, fn=add_fixed(1.0, scale=2)) as t:
        res = mpcache.Session(proto, seed=1).run(job)
    show(f"{proto}, P1 tampers {tag} ({t.count} msg)", res)
print("  -> wrong by exactly +1.0 and accepted: nothing in a semi-honest protocol checks")

print("\n2. inconsistent sharing (P1 adds 2^18 to its rep3.mul_trunc.reshare to P2):")
with tamper(party=1, tag="rep3.mul_trunc.reshare", fn=add_fixed(1.0)):
    show("rep3, plain reveal", mpcache.Session("rep3", seed=1).run(job))
print("  -> P2 is wrong, P0 and P1 are right, and nobody notices")

print("\n3. the same attack with a checked reveal:")
plain = mpcache.Session("rep3", seed=1).run(job).scope("reveal")
ok = mpcache.Session("rep3", seed=1).run(job, checked=True)
chk = ok.scope("reveal")
show("rep3, checked reveal, honest", ok)
with tamper(party=1, tag="rep3.mul_trunc.reshare", fn=add_fixed(1.0)):
    try:
        mpcache.Session("rep3", seed=1).run(job, checked=True)
        print("  NOT DETECTED (unexpected)")
    except InconsistentShares as e:
        print(f"  ABORT: {e}")
        print(f"  suspects: P{e.suspects[0]} and P{e.suspects[1]} (the tamperer here was P1)")
n = x.size
print(f"  cost of the reveal, per party, for {n} values: plain {plain['bytes_sent']} B, "
      f"{plain['messages_sent']} msg, {plain['rounds']} round; checked "
      f"{chk['bytes_sent']} B, {chk['messages_sent']} msgs, {chk['rounds']} rounds "
      f"(+32 B hash, +2 B complaints, +1 round)")

print("\n4. what the check does not see: attack 1 under the checked reveal")
with tamper(party=1, tag="rep3.mul_trunc.open", fn=add_fixed(1.0, scale=2)):
    show("rep3, checked reveal, P1 tampers the opening", mpcache.Session("rep3", seed=1)
         .run(job, checked=True))
print("  -> accepted: the sharing stayed consistent. Only misbehaviour that makes the two\n"
      "     holders of a share component disagree is caught (not malicious security).")
