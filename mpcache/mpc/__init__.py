"""The share-level engine: share arrays in, share arrays out.

Nothing here knows :class:`mpcache.tensor.SecretTensor` or the functions built on it
(mpcache/functions/); the import check in tests/test_layering.py keeps it that way.

* :mod:`.base` -- the share layout, ``Group`` (arithmetic / XOR), the ``Protocol`` interface
* :mod:`.rep3` -- replicated 3PC (honest majority); :mod:`.add2` -- dealer-assisted 2PC
* :mod:`.truncation` -- exact truncation's masks and opener shares (both protocols)
* :mod:`.persistent` -- state of persisted right operands (weights, the KV-cache prefix)
* :mod:`.pair` -- the two-party bit engine (``Pair``, ``pair_of``): 2-of-2 shares between
  two data parties, correlated randomness dealt by the third
* :mod:`.compare_core` -- masked digits, the carry tree, ``msb_bits``, ``sign_to_ring``
* :mod:`.costs` -- every closed-form cost, the comparison's included
"""
