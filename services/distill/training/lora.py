"""Real fine-tuning of a local rung: LoRA with transformers + peft, on CPU here and on a GPU when there is one.

The base weights are loaded by the serving service's own loader (escalon.backends.local), so the
student starts from exactly what the rung serves (the GGUF→safetensors conversion is done once, there) and
its prompts are encoded the way serving encodes them (`LocalBackend.encode`: the chat template for chat
rungs). A training row is (prompt, target): the loss is on the target tokens only.

    student = StudentModel(rung, models_dir=..., threads=2)
    run = student.finetune(rows, out_dir, TrainConfig(), on_step=...)   # checkpoints every few steps
    texts = student.generate(prompts, max_new_tokens=64)                   # batched, greedy or sampled
    student.save_merged(folder)                                            # a transformers model folder

Checkpoints of a training run (adapter weights, optimizer state, step, loss history) go to
<out_dir>/state-<step>/ and a pointer file <out_dir>/state.json written atomically; a run started again
with the same rows and config resumes after the last saved step with the same batch order. Finished runs
leave <out_dir>/adapter/ (peft's format). A merged copy is written to a temporary folder and renamed into
place, so a reader never sees half a model.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from escalon.registry import Rung

log = logging.getLogger(__name__)


class TrainConfig(BaseModel):
    """LoRA and optimiser settings of one fine-tuning run (the method: docs/distillation.md)."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(default=8, ge=1, le=256, description="LoRA rank")
    alpha: int = Field(default=16, ge=1, le=1024, description="LoRA alpha (scale = alpha / r)")
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default=["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1)
    lr: float = Field(default=2e-4, gt=0, le=1)
    epochs: float = Field(default=2, gt=0, le=50, description="passes over the rows (fractions allowed)")
    batch_size: int = Field(default=8, ge=1, le=512)
    max_len: int = Field(default=256, ge=16, le=8192, description="tokens per row (prompt + target), longer rows are cut")
    warmup_steps: int = Field(default=2, ge=0)
    max_steps: int | None = Field(default=None, ge=1, description="stop after this many steps (tests)")
    checkpoint_every: int = Field(default=10, ge=1, description="save a resumable state every this many steps")
    seed: int = 0


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainRun:
    steps: int
    losses: list[float]
    adapter_dir: Path
    seconds: float
    resumed_from: int = 0
    tokens: int = 0


def resolve_device(preference: str = "auto") -> str:
    import torch

    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but CUDA is not available")
    return preference


class StudentModel:
    """A local rung's model, ready to be fine-tuned, sampled and saved."""

    def __init__(self, rung: Rung, *, models_dir: Path, threads: int | None = None, device: str = "auto") -> None:
        if not rung.is_local:
            raise ValueError(f"rung {rung.name} ({rung.backend}) cannot be fine-tuned here: a student must be a "
                             "local model (backend local-gguf or hf)")
        self.rung = rung
        self.models_dir = Path(models_dir)
        self.threads = threads or os.cpu_count() or 1
        self.device = resolve_device(device)
        self._backend: Any = None
        self._pristine: Any = None  # the base weights as loaded, never trained
        self.model: Any = None  # the model answering now: the base, or base + the adapter just trained
        self.tokenizer: Any = None

    # ---- loading -----------------------------------------------------------------------------------------

    def _load_base(self) -> Any:
        """Fresh base weights: loaded once through the serving loader, then copied from memory (every round
        of a job starts from the same base; a copy is faster than reading the weights again)."""
        import copy

        import torch

        if self._pristine is None:
            from escalon.backends.local import LocalBackend

            backend = LocalBackend(self.rung, models_dir=self.models_dir, torch_threads=self.threads)
            backend.load()
            self._backend = backend
            self.tokenizer = backend.tokenizer
            model = backend.model
            if self.device != backend.device:
                model = model.to(self.device)
            if self.device == "cuda":
                model = model.to(torch.bfloat16)
            self._pristine = model
        torch.set_num_threads(self.threads)
        return copy.deepcopy(self._pristine)

    def use_base(self) -> None:
        self.model = self._load_base().eval()

    def use_adapter(self, adapter_dir: Path) -> None:
        from peft import PeftModel

        self.model = PeftModel.from_pretrained(self._load_base(), str(adapter_dir)).eval()

    def encode(self, prompt: str) -> list[int]:
        if self._backend is None:
            self.use_base()
        return self._backend.encode(prompt)

    # ---- generation --------------------------------------------------------------------------------------

    def generate(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int = 64,
        n: int = 1,
        temperature: float = 0.0,
        prefixes: list[str] | None = None,
        batch_size: int = 16,
        seed: int = 0,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> list[list[str]]:
        """n completions per prompt (the prompt encoded as the rung serves it, then an optional forced prefix
        such as "[pot]:", which is returned as part of the text). Greedy when temperature is 0."""
        import torch

        if self.model is None:
            self.use_base()
        torch.set_num_threads(self.threads)
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        encoded = []
        for i, prompt in enumerate(prompts):
            ids = self.encode(prompt)
            prefix = prefixes[i] if prefixes else ""
            if prefix:
                ids = ids + tok(prefix, add_special_tokens=False)["input_ids"]
            encoded.append(ids)
        rows = [(i, ids) for i, ids in enumerate(encoded) for _ in range(n)]
        outputs: list[list[str]] = [[] for _ in prompts]
        # Similar lengths together: less padding. Sorting keeps each prompt's samples in order.
        order = sorted(range(len(rows)), key=lambda k: len(rows[k][1]))
        per_batch = max(1, batch_size)
        batches = [order[i : i + per_batch] for i in range(0, len(order), per_batch)]
        texts: dict[int, str] = {}
        generator_seed = seed
        for b, batch in enumerate(batches):
            width = max(len(rows[k][1]) for k in batch)
            input_ids = torch.tensor([[pad] * (width - len(rows[k][1])) + rows[k][1] for k in batch], device=self.device)
            mask = torch.tensor([[0] * (width - len(rows[k][1])) + [1] * len(rows[k][1]) for k in batch],
                                device=self.device)
            kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": pad}
            if temperature > 0:
                torch.manual_seed(generator_seed + b)
                kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
            else:
                kwargs.update(do_sample=False)
            with torch.inference_mode():
                out = self.model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
            for row, k in enumerate(batch):
                texts[k] = tok.decode(out[row, width:], skip_special_tokens=True)
            if on_batch:
                on_batch(b + 1, len(batches))
        for k, (i, _) in enumerate(rows):
            prefix = prefixes[i] if prefixes else ""
            outputs[i].append(prefix + texts[k])
        return outputs

    # ---- fine-tuning -------------------------------------------------------------------------------------

    def _tokenize_row(self, prompt: str, target: str, max_len: int) -> tuple[list[int], list[int]]:
        tok = self.tokenizer
        prompt_ids = self.encode(prompt)
        if self.rung.prompt_format == "chat":
            full = tok.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": target}],
                tokenize=True, return_dict=True,
            )["input_ids"]
            full = list(full)
            if full[: len(prompt_ids)] != prompt_ids:  # a template that renders the prompt differently alone
                full = prompt_ids + tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        else:
            full = prompt_ids + tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        labels = [-100] * len(prompt_ids) + full[len(prompt_ids):]
        return full[:max_len], labels[:max_len]

    def finetune(
        self,
        rows: list[tuple[str, str]],
        out_dir: Path,
        config: TrainConfig,
        *,
        on_step: Callable[[int, int, float], None] | None = None,
        on_checkpoint: Callable[[int, int], None] | None = None,
        init_adapter: Path | None = None,
    ) -> TrainRun:
        """LoRA on fresh base weights over `rows`; resumes from out_dir's last state when there is one.
        `init_adapter`: start from that adapter's weights instead of a fresh LoRA (continued training: UNDO's
        later rounds); its rank and target modules must match `config`.
        `on_step(step, total, loss)` after every optimiser step (report progress, notice cancellation);
        `on_checkpoint(step, total)` after each saved state (the job checkpoints there). A loss that is not
        finite stops the run with DivergedError (the last saved state stays for inspection)."""
        import torch
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

        if not rows:
            raise ValueError("no training rows")
        out_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        base = self._load_base()
        torch.manual_seed(config.seed)
        lora = LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                          target_modules=list(config.target_modules), task_type="CAUSAL_LM")
        model = get_peft_model(base, lora)
        if init_adapter is not None:
            _load_adapter_weights(model, Path(init_adapter))
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
        encoded = [self._tokenize_row(p, t, config.max_len) for p, t in rows]
        cut = sum(all(label == -100 for label in labels) for _, labels in encoded)
        if cut == len(encoded):  # the loss would be NaN: nothing to learn from
            raise ValueError(f"train.max_len={config.max_len} is shorter than every prompt, so no target token is "
                             "left to learn; raise train.max_len")
        if cut:
            log.warning("%d of %d rows are longer than train.max_len=%d and teach nothing", cut, len(encoded),
                        config.max_len)
        per_epoch = math.ceil(len(encoded) / config.batch_size)
        total = max(1, math.ceil(per_epoch * config.epochs))
        if config.max_steps:
            total = min(total, config.max_steps)
        schedule = _batches(len(encoded), config.batch_size, total, config.seed)

        def lr_at(step: int) -> float:  # linear warmup, then linear decay to 10 %
            if step < config.warmup_steps:
                return config.lr * (step + 1) / (config.warmup_steps + 1)
            frac = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
            return config.lr * (1 - 0.9 * frac)

        losses: list[float] = []
        start = 0
        state = _read_state(out_dir)
        fingerprint = _fingerprint(rows, config, init_adapter)
        if state and state.get("fingerprint") == fingerprint and (out_dir / state["dir"]).is_dir():
            folder = out_dir / state["dir"]
            from safetensors.torch import load_file

            set_peft_model_state_dict(model, load_file(str(folder / "adapter.safetensors")))
            saved = torch.load(folder / "optimizer.pt", weights_only=True)
            optimizer.load_state_dict(saved["optimizer"])
            torch.set_rng_state(saved["rng"])  # dropout masks continue as if never interrupted
            start, losses = state["step"], list(state["losses"])
            log.info("resuming fine-tuning at step %d/%d from %s", start, total, folder)
        tokens = 0
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        for step in range(start, total):
            batch = [encoded[i] for i in schedule[step]]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch], device=self.device)
            labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch], device=self.device)
            mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch], device=self.device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            _check_finite(float(loss.detach()), step + 1, total, len(rows), lr_at(step))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += int(mask.sum())
            losses.append(round(float(loss.detach()), 5))
            done = step + 1
            if on_step:
                on_step(done, total, losses[-1])
            if done % config.checkpoint_every == 0 and done < total:
                _save_state(model, optimizer, out_dir, done, losses, fingerprint)
                if on_checkpoint:
                    on_checkpoint(done, total)
        adapter_dir = out_dir / "adapter"
        _save_dir_atomically(adapter_dir, lambda tmp: model.save_pretrained(str(tmp)))
        for old in out_dir.glob("state-*"):
            shutil.rmtree(old, ignore_errors=True)
        (out_dir / "state.json").unlink(missing_ok=True)
        model.eval()
        self.model = model
        return TrainRun(total, losses, adapter_dir, time.perf_counter() - started, resumed_from=start, tokens=tokens)

    # ---- saving ------------------------------------------------------------------------------------------

    def save_merged(self, folder: Path, *, metadata: dict[str, Any] | None = None) -> Path:
        """The current model with its adapter merged in, as a transformers folder the `hf` backend serves."""
        import torch

        model = self.model
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
            self.model = model
        model = model.to(torch.float32) if self.device == "cpu" else model

        def write(tmp: Path) -> None:
            model.save_pretrained(str(tmp))
            self.tokenizer.save_pretrained(str(tmp))
            if metadata is not None:
                (tmp / "escalon-student.json").write_text(json.dumps(metadata, indent=1))

        return _save_dir_atomically(folder, write)


def _check_finite(loss: float, step: int, total: int, rows: int, lr: float) -> None:
    if not math.isfinite(loss):
        raise DivergedError(f"fine-tuning diverged: loss {loss} at step {step}/{total} ({rows} rows, lr {lr:.2g}); "
                            "lower train.lr or check the rows")


def _batches(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """The index lists of every step: a fresh seeded shuffle per epoch, so a resumed run sees the same order."""
    out: list[list[int]] = []
    epoch = 0
    while len(out) < steps:
        order = list(range(n))
        random.Random(seed * 1000 + epoch).shuffle(order)
        out.extend(order[i : i + batch_size] for i in range(0, n, batch_size))
        epoch += 1
    return out[:steps]


def _fingerprint(rows: list[tuple[str, str]], config: TrainConfig, init_adapter: Path | None = None) -> str:
    from escalon.distill.jobs.base import digest  # here: the jobs package imports this module

    if init_adapter is None:  # the digest of a run from fresh weights is what it always was
        return digest([rows, config.model_dump()])
    return digest([rows, config.model_dump(), str(init_adapter)])


def _load_adapter_weights(model: Any, adapter_dir: Path) -> None:
    """Copy a saved adapter's LoRA weights into a freshly made peft model of the same shape."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{adapter_dir} has no adapter_model.safetensors to continue training from")
    result = set_peft_model_state_dict(model, load_file(str(path)))
    unexpected = [k for k in getattr(result, "unexpected_keys", None) or [] if "lora" in k]
    if unexpected:
        raise ValueError(f"adapter {adapter_dir} does not fit this LoRA config (unexpected keys {unexpected[:3]})")


def _read_state(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / "state.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _save_state(model: Any, optimizer: Any, out_dir: Path, step: int, losses: list[float], fingerprint: str) -> None:
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    name = f"state-{step}"

    def write(tmp: Path) -> None:
        tensors = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(model).items()}
        save_file(tensors, str(tmp / "adapter.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}, tmp / "optimizer.pt")

    from escalon.files import atomic_write

    _save_dir_atomically(out_dir / name, write)
    atomic_write(out_dir / "state.json", json.dumps({"dir": name, "step": step, "losses": losses,
                                                     "fingerprint": fingerprint}))
    for old in out_dir.glob("state-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)


def _save_dir_atomically(folder: Path, write: Callable[[Path], Any]) -> Path:
    """Write a folder next to its final place, then swap it in: readers see the old one or the new one."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder
