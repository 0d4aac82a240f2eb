"""Transformer stack: backend-neutral layers, decoder with KV cache, plaintext reference.

The SmolLM2 loader (:mod:`mpcache.nn.smollm2`) needs the optional ``gguf`` and
``tokenizers`` packages and is imported lazily (``from mpcache.nn.smollm2 import ...``
or ``mpcache.nn.load_smollm2``).
"""
from . import functional
from .kv_cache import KVCache
from .layers import (MASK_VALUE, Attention, Embedding, GeluMLP, LayerNorm, Linear, RMSNorm,
                     RoPE, SwiGLU, causal_mask)
from .transformer import (Decoder, DecoderConfig, gpt2_small_config, random_gpt2_small,
                          random_weights)

__all__ = [
    "functional", "KVCache", "MASK_VALUE", "Attention", "Embedding", "GeluMLP", "LayerNorm",
    "Linear", "RMSNorm", "RoPE", "SwiGLU", "causal_mask", "Decoder", "DecoderConfig",
    "gpt2_small_config", "random_gpt2_small", "random_weights", "perplexity", "token_nll",
    "paul_graham_essays", "load_smollm2", "ModelNotInstalled", "SmolLM2",
]


def __getattr__(name):
    # lazy: smollm2 needs the optional gguf/tokenizers; reference is also a __main__ module
    if name in ("load_smollm2", "ModelNotInstalled", "SmolLM2"):
        from . import smollm2

        return getattr(smollm2, name)
    if name in ("perplexity", "token_nll", "paul_graham_essays"):
        from . import reference

        return getattr(reference, name)
    raise AttributeError(name)
