"""Each party's weight shares on its own disk: a restart loads them instead of re-sharing.

``--share-store DIR`` (rep3 only).  Party i keeps its files in ``DIR/p{i}/`` (three
parties on one host do not collide; on three hosts each writes its own disk):

* ``manifest.json``: the format, the protocol, the party's id, the owner's and client's
  ids, frac bits, the model's name, the **sharing id** (16 random bytes the owner draws
  when it shares and announces: public), the score-bound exponent the owner announced,
  every tensor's name and shape, and per data file its SHA-256.  The owner also keeps a
  fingerprint of its model (size and SHA-256 of the GGUF; ``tiny-random``: its config),
  which never leaves it;
* ``public.json``: the public part this party knows (config and prescales; the client
  also the tokenizer, chat template and special ids it got -- so nothing is fetched again
  on a restart);
* one raw little-endian ``uint64`` file per **non-zero** share component,
  ``NAME.{j}.u64`` for slot j of the party's two.  A rep3 non-owner's other slot is the
  public zero of the owner's input: it is not written, and on load it is rebuilt with
  ``np.zeros`` (its pages stay untouched: no resident memory, as after sharing).

Directory 0700, files 0600.  Never plaintext, never another party's data; but a
non-owner's files (one uniformly random component per weight) reveal nothing alone,
while any two parties' files reconstruct every weight -- and so do the owner's own two
components, whose sum is the weight (the third is the public zero of its input): its
folder is as secret as the model file beside it (docs/network.md, "Share store").

Agreement (scope ``setup/store``, before anything else of the set-up): each party checks
its manifest (format, protocol, ids, frac bits, model; the owner its model fingerprint;
every data file present with its size) and sends the owner a small public doc: ok or
why not, its sharing id, and a digest of its stored public part.  The owner decides --
load only if all three are ok, with one sharing id and one public digest -- and
announces it.  On load every party reads its files and checks every SHA-256; a second
exchange confirms all three loaded intact.  Otherwise each prints one line why and the
set-up shares as usual, then every party overwrites its store (the manifest is removed
first and written last, so a store cut short is never taken for valid) and a last
exchange reports whether all three were written.  While the parties wait for each other
in these exchanges, the receive deadline is raised (a party may be reading gigabytes).

On load the owner does not read the model's weights: its public part and shares come
from its store.  The Decoder is built as :func:`mpcache.nn.private.share_decoder` lays it
out: the folded tensors (:func:`~mpcache.nn.private.folded_shapes`), the norms' gains
None, the same ``persist()`` marks (no work in rep3), ``Decoder(cfg, sw)``, the announced
score bound and the prescales.

add2 is refused: its weights are persisted against a mask B that the dealer P2 draws from
the session's fresh keys (P0/P1 keep ``W - B`` open, the dealer deals ``A @ B`` for each
product), so a stored add2 weight would also need the dealer's B and the stream positions
its triples are drawn from -- state tied to keys that a restart draws anew.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import sys
import time
from pathlib import Path

import numpy as np

#: The store's layout and meaning; a change to how shares are laid out or folded
#: (``share_decoder``) must change it, so older stores are shared again, not misread.
FORMAT = 3
MANIFEST = "manifest.json"
PUBLIC = "public.json"
#: How long a party waits for the others during the store's exchanges (seconds).
PATIENCE = 1800.0


class StoreRefused(ValueError):
    """``--share-store`` cannot be used with these options."""


class StoreInvalid(Exception):
    """This party's store cannot be used (the message says why)."""


def refuse_unless_rep3(protocol: str) -> None:
    if protocol != "rep3":
        raise StoreRefused(
            f"--share-store works with rep3 only, not {protocol}: add2 persists each weight "
            f"against a mask the dealer P2 draws from the session's fresh keys, so stored "
            f"add2 shares would need the dealer's state too (docs/network.md, 'Share store')")


def model_fingerprint(model: str) -> str:
    """The owner's fingerprint of its model (kept in its own manifest only): size and
    SHA-256 of the GGUF, or for ``tiny-random`` the SHA-256 of its config."""
    from ..nn.smollm2 import gguf_path, load_public
    if model == "tiny-random":
        from .serve import tiny_config
        cfg = dataclasses.asdict(tiny_config(load_public().config.vocab_size))
        return "tiny-random:" + hashlib.sha256(_canon(cfg)).hexdigest()
    path = gguf_path()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            h.update(block)
    return f"{path.name}:{path.stat().st_size}:{h.hexdigest()}"


def _canon(doc) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")


def public_digest(public: dict, bounds) -> str:
    """What every party must agree on besides the sharing id: the config, the prescales
    and the public bound exponents ``[score, act, logit, col]`` (``nn.private.set_bounds``;
    the tokenizer, held by the client only, is not in it)."""
    doc = {"config": public["config"], "prescales": public["prescales"],
           "bounds": [int(e) for e in bounds]}
    return hashlib.sha256(_canon(doc)).hexdigest()


@contextlib.contextmanager
def patient(party, seconds: float = PATIENCE):
    """Raise the transport's receive deadline while the parties wait for each other."""
    tr = getattr(party, "transport", None)
    old = getattr(tr, "timeout", None)
    if old is not None:
        tr.timeout = max(old, seconds)
    try:
        yield
    finally:
        if old is not None:
            tr.timeout = old


def _send_doc(party, to: int, doc: dict, tag: str) -> None:
    raw = np.frombuffer(_canon(doc), dtype=np.uint8)
    party.send(to, np.array([raw.size], dtype=np.int64), tag + ".size")
    party.send(to, raw, tag)


def _recv_doc(party, frm: int, tag: str) -> dict:
    n = int(party.recv(frm, tag + ".size", (1,))[0])
    return json.loads(bytes(np.asarray(party.recv(frm, tag, (n,)), dtype=np.uint8)))


def agree(party, owner: int, doc: dict, decide, tag: str) -> dict:
    """Every party's ``doc`` to the owner, ``decide(docs by party id)`` there, its verdict
    (a dict) announced to the others.  Everything sent is public."""
    if party.id != owner:
        _send_doc(party, owner, doc, tag + ".doc")
        return _recv_doc(party, owner, tag + ".verdict")
    docs = {i: (doc if i == owner else _recv_doc(party, i, tag + ".doc")) for i in range(3)}
    verdict = decide(docs)
    for i in range(3):
        if i != owner:
            _send_doc(party, i, verdict, tag + ".verdict")
    return verdict


def _first_failure(docs: dict) -> str | None:
    for i in sorted(docs):
        if not docs[i]["ok"]:
            return f"P{i}: {docs[i]['why']}"
    return None


class ShareStore:
    """One party's share store ``root/p{id}`` for one set-up (see the module doc)."""

    def __init__(self, party, root: str, model: str, owner: int = 1, client: int = 0):
        refuse_unless_rep3(party.protocol_name)
        self.party, self.model, self.owner, self.client = party, model, owner, client
        self.folder = Path(root).expanduser().absolute() / f"p{party.id}"
        self.fingerprint = None
        self.sharing_id = None
        self.info = {"dir": str(self.folder), "shares": "shared", "why": "", "seconds": 0.0,
                     "disk_bytes": 0, "sharing_id": None}

    # -- restore -------------------------------------------------------------------------
    def restore(self):
        """``(decoder, public)`` from the three stores, or ``(None, None)`` when the set-up
        must share (the reason is printed and kept in :attr:`info`)."""
        party = self.party
        t0 = time.perf_counter()
        with patient(party), party.scope("store"):
            manifest, why = self._check()
            doc = {"ok": manifest is not None, "why": why,
                   "sharing_id": manifest and manifest["sharing_id"],
                   "public": manifest and manifest["public_digest"]}
            verdict = agree(party, self.owner, doc, self._decide_manifests, "setup.store.check")
            self.sharing_id, loaded = verdict["sharing_id"], None
            if verdict["load"]:
                try:
                    loaded, doc = self._load(manifest), {"ok": True, "why": ""}
                except StoreInvalid as e:
                    doc = {"ok": False, "why": str(e)}
                except (KeyError, ValueError, TypeError) as e:
                    doc = {"ok": False, "why": f"malformed store: {e!r}"}
                verdict = agree(party, self.owner, doc, self._decide_loads, "setup.store.load")
        self.sharing_id = verdict["sharing_id"]
        self.info.update(sharing_id=self.sharing_id, why=verdict["why"])
        if not verdict["load"]:
            loaded = None
            self._say(f"sharing the weights anew: {verdict['why']}")
            return None, None
        dec, public = _decoder(party, *loaded)
        self.info.update(shares="loaded", seconds=time.perf_counter() - t0,
                         disk_bytes=manifest["disk_bytes"])
        self._say(f"loaded sharing {self.sharing_id[:12]} from {self.folder} "
                  f"({manifest['disk_bytes'] / 1e9:.2f} GB, {self.info['seconds']:.1f} s)")
        return dec, public

    def _decide_manifests(self, docs: dict) -> dict:
        why = _first_failure(docs)
        if why is None and len({d["sharing_id"] for d in docs.values()}) > 1:
            why = "the stores hold different sharings (sharing ids " + ", ".join(
                f"P{i} {d['sharing_id'][:12]}" for i, d in sorted(docs.items())) + ")"
        if why is None and len({d["public"] for d in docs.values()}) > 1:
            why = "the stores' public parts (config, prescales, score bound) differ"
        if why is not None:
            return {"load": False, "why": why, "sharing_id": secrets.token_hex(16)}
        sid = docs[self.owner]["sharing_id"]
        return {"load": True, "why": f"all three stores hold sharing {sid[:12]}",
                "sharing_id": sid}

    def _decide_loads(self, docs: dict) -> dict:
        why = _first_failure(docs)
        if why is not None:
            return {"load": False, "why": why, "sharing_id": secrets.token_hex(16)}
        sid = self.sharing_id
        return {"load": True, "why": f"all three stores hold sharing {sid[:12]}, intact",
                "sharing_id": sid}

    def _check(self):
        """``(manifest, "")`` if this party's store looks usable without reading its data
        files, else ``(None, why)``."""
        p = self.party
        path = self.folder / MANIFEST
        if p.id == self.owner:
            try:
                self.fingerprint = model_fingerprint(self.model)
            except Exception as e:     # noqa: BLE001 - the set-up's own load reports it
                return None, f"cannot fingerprint the model: {e}"
        if not path.exists():
            return None, f"no share store in {self.folder}"
        try:
            m = json.loads(path.read_text())
            return self._check_manifest(m)
        except (OSError, ValueError, KeyError, TypeError) as e:
            return None, f"unreadable manifest {path}: {e!r}"

    def _check_manifest(self, m: dict):
        p = self.party
        want = {"format": FORMAT, "protocol": p.protocol_name, "party": p.id,
                "owner": self.owner, "client": self.client, "frac_bits": p.fxp.frac_bits,
                "model": self.model, "byteorder": sys.byteorder}
        for key, value in want.items():
            if m.get(key) != value:
                return None, f"stored {key} {m.get(key)!r}, this session {value!r}"
        if p.id == self.owner and m.get("fingerprint") != self.fingerprint:
            return None, "the model file differs from the one the store was shared from"
        if not (isinstance(m["sharing_id"], str) and isinstance(m["public_digest"], str)
                and isinstance(m["bounds"], list) and len(m["bounds"]) == 4
                and all(isinstance(e, int) for e in m["bounds"])
                and isinstance(m["disk_bytes"], int)):
            return None, "malformed manifest"
        for f in [m["public_file"]] + [c for t in m["tensors"].values()
                                       for c in t["components"].values()]:
            if Path(f["file"]).name != f["file"]:       # a file of this folder only
                return None, f"malformed manifest: file name {f['file']!r}"
            fp = self.folder / f["file"]
            size = fp.stat().st_size if fp.exists() else None
            if size != f["bytes"]:
                return None, (f"{fp} is missing" if size is None else
                              f"{fp} has {size} bytes, the manifest says {f['bytes']}")
        return m, ""

    def _load(self, m: dict):
        """``(config, sw, public, bounds)`` from the files, every SHA-256 checked."""
        from ..nn.private import _Releasing, folded_shapes
        from ..nn.transformer import DecoderConfig
        from ..tensor import SecretTensor
        pf = m["public_file"]
        public = json.loads(_read(self.folder / pf["file"], None, pf["sha256"]))
        config = DecoderConfig(**public["config"], dtype="float64")
        shapes = {k: list(v) for k, v in folded_shapes(config).items()}
        stored = {k: t["shape"] for k, t in m["tensors"].items()}
        if stored != shapes:
            raise StoreInvalid("the stored tensors are not the model's folded layout")
        sw = _Releasing()
        for name, t in m["tensors"].items():
            data = np.zeros((2,) + tuple(t["shape"]), dtype=np.uint64)  # untouched zeros
            for j, f in t["components"].items():
                _read(self.folder / f["file"], data[int(j)], f["sha256"])
            sw[name] = SecretTensor(self.party, data, m["frac_bits"])
        return config, sw, public, m["bounds"]

    # -- save ----------------------------------------------------------------------------
    def save(self, dec, public: dict) -> None:
        """Write this party's shares of ``dec`` (the decoder :func:`share_decoder` built),
        then wait for the others and report whether all three stores were written."""
        party = self.party
        t0 = time.perf_counter()
        with patient(party), party.scope("store"):
            try:
                disk = self._write(dec, public)
                doc = {"ok": True, "why": ""}
            except (OSError, ValueError) as e:
                disk, doc = 0, {"ok": False, "why": f"cannot write {self.folder}: {e}"}
            verdict = agree(party, self.owner, doc, self._decide_written, "setup.store.save")
        self.info.update(seconds=time.perf_counter() - t0, disk_bytes=disk)
        if doc["ok"]:
            self._say(f"wrote sharing {self.sharing_id[:12]} to {self.folder} "
                      f"({disk / 1e9:.2f} GB, {self.info['seconds']:.1f} s)")
        if not verdict["ok"]:
            self._say(f"the next run will share again: {verdict['why']}")

    @staticmethod
    def _decide_written(docs: dict) -> dict:
        why = _first_failure(docs)
        return {"ok": why is None, "why": why or ""}

    def _write(self, dec, public: dict) -> int:
        p, folder = self.party, self.folder
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        (folder / MANIFEST).unlink(missing_ok=True)     # no valid store until complete
        from ..nn.private import get_bounds
        bounds = get_bounds(dec)
        tensors, files, disk = {}, set(), 0
        for name, t in dec.weights.items():
            if t is None:
                continue
            if t.frac != p.fxp.frac_bits:
                raise ValueError(f"{name} has {t.frac} fraction bits")
            comps = {}
            for j in range(2):
                c = np.ascontiguousarray(t.data[j])
                if not c.any():                         # a public zero: not written
                    continue
                fname = f"{name}.{j}.u64"
                comps[str(j)] = {"file": fname, "bytes": c.nbytes,
                                 "sha256": _write(folder / fname, c)}
                files.add(fname)
                disk += c.nbytes
                del c
            tensors[name] = {"shape": list(t.shape), "components": comps}
        known = {k: public[k] for k in public} if p.id == self.client else \
            {k: public[k] for k in ("config", "prescales")}
        raw = np.frombuffer(json.dumps(known).encode("utf-8"), dtype=np.uint8)
        pub = {"file": PUBLIC, "bytes": raw.nbytes, "sha256": _write(folder / PUBLIC, raw)}
        disk += raw.nbytes
        manifest = {"format": FORMAT, "protocol": p.protocol_name, "party": p.id,
                    "owner": self.owner, "client": self.client,
                    "frac_bits": p.fxp.frac_bits, "model": self.model,
                    "byteorder": sys.byteorder, "sharing_id": self.sharing_id,
                    "bounds": bounds, "public_digest": public_digest(public, bounds),
                    "public_file": pub, "tensors": tensors, "disk_bytes": disk}
        if p.id == self.owner:
            manifest["fingerprint"] = self.fingerprint or model_fingerprint(self.model)
        for old in folder.glob("*.u64"):                # a previous sharing's leftovers
            if old.name not in files:
                old.unlink()
        tmp = folder / (MANIFEST + ".tmp")
        _write(tmp, np.frombuffer(json.dumps(manifest, indent=1).encode("utf-8"), np.uint8))
        os.replace(tmp, folder / MANIFEST)
        return disk

    def _say(self, text: str) -> None:
        sys.stderr.write(f"[P{self.party.id}] share store: {text}\n")    # one write: one line
        sys.stderr.flush()


def _decoder(party, config, sw, public, bounds):
    """The Decoder over loaded shares, laid out as ``share_decoder`` builds it."""
    from ..nn.private import apply_prescales, release_zero_pages, set_bounds
    from ..nn.transformer import Decoder, weight_shapes
    for name, t in sw.items():
        if t.ndim == 2 and name != "pos_embed":         # the same marks (no work in rep3)
            t.persist()
    for name in weight_shapes(config):
        if "_norm." in name:
            sw[name] = None                             # gains are in the next linear
    cfg = dataclasses.replace(config, dtype="float64", tie_embeddings=False)
    dec = Decoder(cfg, sw)
    set_bounds(dec, bounds)
    release_zero_pages([t for t in dec.weights.values() if t is not None])
    if public.get("prescales"):
        apply_prescales(dec, public["prescales"])
    return dec, public


def _write(path: Path, arr: np.ndarray) -> str:
    """``arr``'s bytes to a 0600 file; returns their SHA-256."""
    buf = memoryview(np.ascontiguousarray(arr)).cast("B")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(buf)
    return hashlib.sha256(buf).hexdigest()


def _read(path: Path, into: np.ndarray | None, sha256: str) -> bytes | None:
    """The file into ``into`` (or returned, for None), its SHA-256 checked."""
    try:
        with open(path, "rb") as fh:
            if into is None:
                data = fh.read()
                buf = memoryview(data)
            else:
                buf = memoryview(into).cast("B")
                if fh.readinto(buf) != buf.nbytes or fh.read(1):
                    raise StoreInvalid(f"{path} does not have {buf.nbytes} bytes")
    except OSError as e:
        raise StoreInvalid(f"cannot read {path}: {e}") from None
    if hashlib.sha256(buf).hexdigest() != sha256:
        raise StoreInvalid(f"{path} fails its SHA-256 check")
    return data if into is None else None
