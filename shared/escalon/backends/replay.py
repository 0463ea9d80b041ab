"""Replay: answer from recorded benchmark outputs (benchmark.parquet in the shared routing format).

A replay rung stands in for a model that cannot run here (a remote API, a 47B model): it returns the
answer that model gave when the benchmark was recorded, with the recorded cost and score. That is what
lets the demo show a real escalation offline. What a recording cannot give, it does not invent:

- One answer per prompt: `n` is capped to 1 (n identical copies would fake agreement between samples).
- The answer is returned as recorded: temperature, seed, stop strings and max_tokens do not change it,
  because `reference_score` describes exactly that text.
- No logprobs: the recordings hold none, so judges that need them skip.
- A prompt with a recorded score but no recorded response is RungUnavailable, not an empty answer: an
  empty string would be judged (and scored) as if the model had said nothing.
"""

from __future__ import annotations

import math
from pathlib import Path

from escalon.errors import ConfigError, NotAnswerable
from escalon.registry import Rung

from escalon.tokens import TokenCounters

from .base import Backend, GenerateParams, GenerateResult, Sample

COLUMNS = ("prompt_id", "task", "split", "prompt", "model", "response", "score", "cost_usd")


def normalise(prompt: str) -> str:
    """Whitespace-insensitive key: callers re-wrap and strip prompts, recordings keep their own spacing."""
    return " ".join(prompt.split())


class ReplayBackend(Backend):
    def __init__(self, rung: Rung) -> None:
        super().__init__(rung)
        if rung.benchmark is None:  # the catalogue validates this; keep the error clear if built by hand
            raise ConfigError(f"replay rung {rung.name} needs benchmark (a benchmark.parquet path)")
        self.path = Path(rung.benchmark)
        self._rows: dict[str, dict] = {}
        self.tokens = TokenCounters()

    def load(self) -> None:
        import pandas as pd

        try:
            table = pd.read_parquet(self.path)
        except FileNotFoundError:
            raise ConfigError(f"replay rung {self.rung.name}: benchmark {self.path} does not exist") from None
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a configuration problem
            raise ConfigError(f"replay rung {self.rung.name}: cannot read {self.path} as parquet: {exc}") from None
        missing = [c for c in COLUMNS if c not in table.columns]
        if missing:
            raise ConfigError(f"replay rung {self.rung.name}: {self.path} lacks columns {', '.join(missing)}")
        mine = table[table["model"] == self.rung.model]
        if mine.empty:
            models = ", ".join(sorted(table["model"].dropna().unique()))
            raise ConfigError(
                f"replay rung {self.rung.name}: {self.path} has no rows for model {self.rung.model!r}; "
                f"models recorded: {models}"
            )
        # The first recording of a prompt wins; later duplicates (re-runs) are ignored.
        for row in mine.to_dict("records"):
            self._rows.setdefault(normalise(row["prompt"]), row)

    async def generate(self, params: GenerateParams) -> GenerateResult:
        row = self._rows.get(normalise(params.prompt))
        if row is None:
            raise NotAnswerable(f"prompt not recorded for {self.rung.model} in {self.path}")
        response = row["response"]
        if not isinstance(response, str):
            raise NotAnswerable(
                f"{self.rung.model} has a recorded score but no recorded response for {row['prompt_id']} in {self.path}"
            )
        # The recorded model's tokenizer where known (tiktoken for OpenAI models), else characters / 4.
        input_tokens, output_tokens = self.tokens.count(self.rung, params.prompt), self.tokens.count(self.rung, response)
        cost = _number(row["cost_usd"])
        score = _number(row["score"])
        return GenerateResult(
            samples=[Sample(text=response, finish_reason="stop", output_tokens=output_tokens)],
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost if cost is not None else self.rung.cost(input_tokens, output_tokens),
            reference_score=score,
        )

    async def health(self) -> str:
        if not self._rows:
            raise RuntimeError(f"replay rung {self.rung.name}: {self.path} is not loaded")
        return f"replaying {len(self._rows)} recorded answers of {self.rung.model} (one sample per prompt)"

    async def close(self) -> None:
        self._rows.clear()


def _number(value: object) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
