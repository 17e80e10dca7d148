"""Embedding files: medti's native ``.safetensors`` and AUTOMATIC1111 ``.pt``.

Native: a safetensors file with one tensor ``{token: float32[n, d]}`` - exactly what diffusers'
``load_textual_inversion`` reads - and string metadata (concept, vectors, steps, base model id
and hash, dataset version, medti version, ...).  64 x 1024 fp32 is 262 KB.

A1111 ``.pt``: ``{"string_to_param": {"*": tensor}, "string_to_token": {"*": 265}, "name": ...,
"step": ..., "sd_checkpoint": ..., "sd_checkpoint_name": ...}``.  It is a pickle, so it is read with
``torch.load(weights_only=True, map_location="cpu")`` only: a pickle that tries to build
anything but tensors and plain containers is refused and nothing in it runs.

The token a loaded embedding binds to comes from the file name (``csPCa.safetensors`` ->
``<csPCa>``) or an explicit argument, never silently from a ``name`` field such as
``prostate_pos-50000``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medti import __version__

_TOKEN_OK = re.compile(r"^<?[A-Za-z0-9_\-.]+>?$")


class EmbeddingError(ValueError):
    """An embedding file that cannot be read or written; the message names the file and why."""


@dataclass
class Embedding:
    token: str  # e.g. "<csPCa>"
    vectors: Any  # torch.Tensor [n, d] float32
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def n_vectors(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def concept(self) -> str:
        return self.metadata.get("concept") or self.token.strip("<>")

    @property
    def version(self) -> str:
        """Short content hash: what synthetic manifests record as the embedding version."""
        import hashlib

        import numpy as np

        arr = np.ascontiguousarray(self.vectors.detach().float().cpu().numpy())
        return hashlib.sha256(arr.tobytes()).hexdigest()[:12]


def token_for(name: str) -> str:
    """Canonical token for a concept name: ``csPCa`` -> ``<cspca>``.

    Tokens are lower-case because the CLIP tokenizer lower-cases its input: a mixed-case added
    token is still matched, but ``tokenize()`` returns it lower-cased, so diffusers' multi-vector
    prompt expansion would silently use only the first vector.
    """
    name = name.strip()
    if not _TOKEN_OK.match(name):
        raise EmbeddingError(f"concept/token name {name!r} may only contain letters, digits, _ - .")
    return f"<{name.strip('<>').lower()}>"


def concept_from_path(path: Path) -> str:
    stem = Path(path).name
    for suf in (".safetensors", ".pt", ".bin"):
        if stem.endswith(suf):
            stem = stem[: -len(suf)]
    return stem


def token_from_path(path: Path) -> str:
    return token_for(concept_from_path(path))


def _as_2d(t, path: Path):
    import torch

    if not isinstance(t, torch.Tensor):
        raise EmbeddingError(f"{path}: embedding is a {type(t).__name__}, not a tensor")
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2 or t.shape[0] < 1:
        raise EmbeddingError(f"{path}: embedding has shape {tuple(t.shape)}, expected [n_vectors, dim]")
    if not torch.isfinite(t).all():
        raise EmbeddingError(f"{path}: embedding contains NaN or inf")
    return t.detach().to(torch.float32).contiguous()


def check_save_path(path: Path) -> Path:
    """``path`` if an embedding can be written there (by its suffix), else a clear error - checked
    before training starts, so a long run never ends unable to save."""
    path = Path(path)
    if path.suffix not in (".safetensors", ".pt"):
        raise EmbeddingError(f"{path}: unknown embedding format (use .safetensors or .pt)")
    return path


def safetensors_bytes(tensors: dict[str, Any], metadata: dict[str, str]) -> bytes:
    """``safetensors.torch.save`` with a canonical header: its ``__metadata__`` keys sorted, so that the same
    tensors and metadata always give the same bytes. safetensors writes the metadata in its hash map's order, which
    changes from call to call (safetensors#584; the fix, PR #790, is unreleased), so two identical trainings wrote
    different files: another DVC version, another checksum. Offsets are relative to the data, which is kept as is."""
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    canon = {"__metadata__": dict(sorted(header.pop("__metadata__", {}).items()))} if metadata else {}
    canon.update(sorted(header.items()))
    text = json.dumps(canon, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the data stays 8-byte aligned, as safetensors pads it
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


def save_embedding(emb: Embedding, path: Path) -> Path:
    """Write ``emb`` as ``.safetensors`` (native) or ``.pt`` (A1111), atomically."""
    path = check_save_path(path)
    if path.suffix == ".safetensors":
        meta = {k: str(v) for k, v in emb.metadata.items()}
        meta.setdefault("medti_version", __version__)
        meta.setdefault("concept", emb.concept)
        meta["vectors"] = str(emb.n_vectors)
        meta["dim"] = str(emb.dim)
        meta["token"] = emb.token
        data = safetensors_bytes({emb.token: emb.vectors.detach().to("cpu").float().contiguous()}, meta)
    elif path.suffix == ".pt":
        import io

        import torch

        md = emb.metadata
        obj = {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": emb.vectors.detach().to("cpu").float().contiguous()},
            "name": emb.concept,
            "step": int(md.get("steps", 0) or 0),
            "sd_checkpoint": md.get("base_model_hash", ""),
            "sd_checkpoint_name": md.get("base_model", ""),
        }
        buf = io.BytesIO()
        torch.save(obj, buf)
        data = buf.getvalue()
    from medti.io import atomic_write_bytes

    atomic_write_bytes(path, data)
    return path


def load_embedding(path: Path, token: str | None = None) -> Embedding:
    """Read a native ``.safetensors`` or an A1111 ``.pt`` embedding (safely)."""
    path = Path(path)
    if not path.is_file():
        raise EmbeddingError(f"{path}: embedding file not found")
    tok = token_for(token) if token else token_from_path(path)
    concept = (token or concept_from_path(path)).strip("<>")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
                meta = dict(f.metadata() or {})
                if len(keys) != 1:
                    raise EmbeddingError(
                        f"{path}: expected one tensor {{token: [n, dim]}}, found keys {keys[:5]}"
                    )
                vec = f.get_tensor(keys[0])
        except EmbeddingError:
            raise
        except Exception as e:
            raise EmbeddingError(f"{path}: not a readable safetensors file ({e})") from e
        meta.setdefault("concept", concept)
        return Embedding(tok, _as_2d(vec, path), meta)
    if path.suffix in (".pt", ".bin"):
        import pickle

        import torch

        with open(path, "rb") as f:
            head = f.read(4)
        if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
            raise EmbeddingError(f"{path}: not a PyTorch file (neither a zip archive nor a pickle; it starts {head!r})")
        try:
            obj = torch.load(str(path), weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as e:
            raise EmbeddingError(
                f"{path}: refused - the pickle asks to construct objects other than tensors "
                f"(possible code execution); nothing in it was run. Details: {_unpickler_reason(e)}"
            ) from e
        except Exception as e:
            raise EmbeddingError(f"{path}: not a readable torch file ({type(e).__name__}: {e})") from e
        if isinstance(obj, dict) and "string_to_param" in obj:
            params = obj["string_to_param"]
            if not isinstance(params, dict) or "*" not in params:
                raise EmbeddingError(f"{path}: A1111 file without string_to_param['*']")
            vec = params["*"]
            meta = {
                "concept": concept,
                "a1111_name": str(obj.get("name", "")),
                "steps": str(obj.get("step", "")),
                "base_model_hash": str(obj.get("sd_checkpoint", "") or ""),
                "base_model": str(obj.get("sd_checkpoint_name", "") or ""),
                "source_format": "a1111",
            }
        elif isinstance(obj, dict) and len(obj) == 1:
            vec = next(iter(obj.values()))
            meta = {"concept": concept, "source_format": "diffusers-bin"}
        elif hasattr(obj, "ndim"):
            vec, meta = obj, {"concept": concept, "source_format": "tensor"}
        else:
            raise EmbeddingError(f"{path}: not an embedding (neither A1111 string_to_param nor {{token: tensor}})")
        return Embedding(tok, _as_2d(vec, path), meta)
    raise EmbeddingError(f"{path}: unknown embedding format (use .safetensors or .pt)")


def _unpickler_reason(e: Exception) -> str:
    """The line of torch's weights-only refusal that says what was refused (its other lines are boilerplate,
    including advice to retry with weights_only=False, which medti never does)."""
    boiler = ("Weights only load failed", "Please file an issue", "Check the documentation", "WeightsUnpickler error")
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    reasons = [ln for ln in lines if not ln.startswith(boiler)]
    return reasons[0] if reasons else (lines[0] if lines else type(e).__name__)


def convert_embedding(src: Path, dst: Path, token: str | None = None, overwrite: bool = False) -> Path:
    """``src`` written again in ``dst``'s format; an existing ``dst`` (the source itself, a trained
    embedding) is replaced only with ``overwrite``."""
    dst = check_save_path(dst)
    if dst.exists() and not overwrite:
        raise EmbeddingError(f"{dst} already exists (use --force to replace it)")
    emb = load_embedding(src, token=token)
    return save_embedding(emb, dst)


def inspect_embedding(path: Path) -> dict[str, Any]:
    """What `medti embed inspect` prints: concept, vectors, dim, norm stats, base model, size."""
    emb = load_embedding(path)
    norms = emb.vectors.norm(dim=1)
    md = emb.metadata
    return {
        "file": str(path),
        "token": emb.token,
        "concept": emb.concept,
        "vectors": emb.n_vectors,
        "dim": emb.dim,
        "norm_mean": round(float(norms.mean()), 4),
        "norm_min": round(float(norms.min()), 4),
        "norm_max": round(float(norms.max()), 4),
        "base_model": md.get("base_model", ""),
        "base_model_hash": md.get("base_model_hash", ""),
        "steps": md.get("steps", ""),
        "dataset_version": md.get("dataset_version", ""),
        "version": emb.version,
        "bytes": Path(path).stat().st_size,
        "metadata": json.loads(json.dumps(md)),
    }


def load_into(tokenizer, text_encoder, emb: Embedding) -> list[str]:
    """Add ``emb``'s tokens to a tokenizer/text encoder (diffusers' multi-vector convention:
    ``<tok>``, ``<tok>_1`` ... ``<tok>_{n-1}``). Returns the token strings added."""
    import torch

    names = [emb.token] + [f"{emb.token}_{i}" for i in range(1, emb.n_vectors)]
    clash = [t for t in names if t in tokenizer.get_vocab()]
    if clash:
        raise EmbeddingError(f"token {clash[0]!r} is already in the tokenizer; load each concept once")
    emb_layer = text_encoder.get_input_embeddings()
    if emb.dim != emb_layer.weight.shape[1]:
        raise EmbeddingError(
            f"embedding {emb.token} has dim {emb.dim} but the base's text encoder expects "
            f"{emb_layer.weight.shape[1]} (trained for another base?)"
        )
    tokenizer.add_tokens(names)
    text_encoder.resize_token_embeddings(len(tokenizer))
    w = text_encoder.get_input_embeddings().weight
    ids = tokenizer.convert_tokens_to_ids(names)
    with torch.no_grad():
        w[ids] = emb.vectors.to(device=w.device, dtype=w.dtype)
    return names


def expand_token(text: str, emb: Embedding) -> str:
    """Replace the concept token in ``text`` by its n vector tokens."""
    seq = " ".join([emb.token] + [f"{emb.token}_{i}" for i in range(1, emb.n_vectors)])
    return re.sub(re.escape(emb.token) + r"(?!_\d)", seq, text)
