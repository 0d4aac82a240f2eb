"""The PRG: AES-128-CTR words, stream order independent of how draws are split."""
import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from mpcache.prg import PRG, array_to_key, fresh_key, key_to_array


def _ecb_counter_stream(key: int, n_words: int) -> np.ndarray:
    """AES-128-CTR built independently: ECB encryption of counter blocks 0, 1, 2, ..."""
    enc = Cipher(algorithms.AES(key.to_bytes(16, "little")), modes.ECB()).encryptor()
    blocks = b"".join(i.to_bytes(16, "big") for i in range((n_words + 1) // 2))
    return np.frombuffer(enc.update(blocks), dtype="<u8")[:n_words].astype(np.uint64)


@pytest.mark.parametrize("key", [0, 1, 2**128 - 1, 0x2B7E151628AED2A6ABF7158809CF4F3C])
def test_stream_is_aes_ctr_from_counter_zero(key):
    got = PRG(key).ring(9001)
    assert np.array_equal(got, _ecb_counter_stream(key, 9001))


def test_split_draws_equal_one_draw():
    rng = np.random.default_rng(7)
    for trial in range(40):
        sizes = [int(s) for s in rng.choice([1, 2, 7, 64, 256, 257, 4095, 4096, 9000],
                                            size=6)]
        key = fresh_key(rng)
        a, b = PRG(key), PRG(key)
        parts = []
        for i, s in enumerate(sizes):      # all three entry points share one stream
            if i % 3 == 0:
                parts.append(a.ring(s))
            elif i % 3 == 1:
                parts.append(a.words_view(s).copy())
            else:
                parts.append(a._raw(s, copy=False).copy())
        assert np.array_equal(np.concatenate(parts), b.ring(sum(sizes)))


def test_draws_are_fresh_writable_arrays_and_shapes():
    p = PRG(5)
    x = p.ring((3, 4))
    assert x.shape == (3, 4) and x.dtype == np.uint64 and x.flags.writeable
    x[:] = 0                                   # writing a draw does not touch the stream
    q = PRG(5)
    q.ring(12)
    assert np.array_equal(p.ring(5), q.ring(5))
    bits = PRG(6).bits(1000)
    assert set(np.unique(bits)) == {0, 1}


def test_keys_differ_and_range_is_checked():
    assert not np.array_equal(PRG(1).ring(8), PRG(2).ring(8))
    with pytest.raises(ValueError):
        PRG(2**128)
    with pytest.raises(ValueError):
        PRG(-1)


def test_fresh_key_reproducible_and_roundtrips():
    k1 = fresh_key(np.random.default_rng(3))
    k2 = fresh_key(np.random.default_rng(3))
    assert k1 == k2 and 0 <= k1 < 2**128
    assert array_to_key(key_to_array(k1)) == k1
    assert np.array_equal(PRG(k1).ring(16), PRG(k2).ring(16))
    assert fresh_key() != fresh_key()
