"""A small benchmark in the shared routing format, generated: arithmetic questions answered by three model
families of rising price and skill. For tests and benchmarks that need a routing artefact in seconds.

Each model's recorded response is a number (right or wrong by the model's skill on that task), its score
whether it is right, its cost a fixed price plus a per-character price. Deterministic for a seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

# model: (family-bearing id, price per call, price per prompt character, P(right) per task)
MODELS = {
    "cheapco/small": (1e-6, 1e-9, {"add": 0.9, "mul": 0.3, "div": 0.2}),
    "otherlab/mid": (4e-6, 4e-9, {"add": 0.95, "mul": 0.75, "div": 0.4}),
    "bigcorp/large": (4e-5, 4e-8, {"add": 0.98, "mul": 0.95, "div": 0.9}),
}
TASKS = {"add": "What is {a} + {b}?", "mul": "What is {a} * {b}? Calculate it.",
         "div": "How much is {p} divided by {a}, rounded down? What is the result?"}


def synthetic_frame(n: int = 240, seed: int = 0, responses: bool = True, prices: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        task = list(TASKS)[i % len(TASKS)]
        a, b = int(rng.integers(2, 99)), int(rng.integers(2, 99))
        truth = {"add": a + b, "mul": a * b, "div": (a * b + 7) // a}[task]
        prompt = TASKS[task].format(a=a, b=b, p=a * b + 7)
        split = "test" if i % 10 < 3 else "train"
        for model, (fixed, per_char, skill) in MODELS.items():
            right = rng.random() < skill[task]
            answer = truth if right else truth + int(rng.integers(1, 9)) * (1 if rng.random() < 0.5 else -1)
            rows.append({
                "prompt_id": f"syn-{i}", "task": task, "split": split, "prompt": prompt, "model": model,
                "response": f"The answer is {answer}." if responses else None,
                "score": float(right),
                "cost_usd": fixed + per_char * len(prompt) if prices else 1e-6,
            })
    return pd.DataFrame(rows)


def write_synthetic(path: Path | str, **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    synthetic_frame(**kwargs).to_parquet(path, index=False)
    return path
