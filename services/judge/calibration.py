"""Aggregation and calibration: from the judges that ran to one confidence that means what it says.

    raw        = Σ_j ω_j s_j / Σ_j ω_j      over the judges j that ran (skipped judges drop out, never faked)
    confidence = g(raw)                     g: isotonic or Platt, fitted on logged outcomes

Both ω and g are fitted per *group* — (task, rung), with back-off to (task, *), (*, rung) and (*, *) when a
group has too few rows — because calibration is model-specific: on GSM8K, Mixtral's answer that disagrees with
GPT-4's is right 13% of the time, GPT-4's that disagrees with Mixtral's 74%. And g is fitted per *set of judges
that ran*: a cascade's first rung has no cross-model evidence, so its raw combination means something else
than the same number with cross_model in it. At fit time each subset S of a group's judges gets its own map,
fitted on the rows where every judge of S ran, using only S (what the service will see when only S runs).

Weights: ω = softmax(θ), fitted jointly with a Platt map by minimising the log-loss on the fit rows (L-BFGS,
a small L2 on θ); weights under 1% are dropped. With fewer than 10 rows of the rarer outcome per judge (a
small live set, a model that is almost always wrong) the weights stay uniform and only the map is fitted. Map: isotonic or Platt, whichever has the lower 5-fold
cross-validated Brier score on the fit rows ("auto"), or the one asked for.

The artefact is JSON, format `escalon.judge-calibration/v1` (see `Calibration.to_json`). The judge service
loads it from ESCALON_JUDGE_CALIBRATION (one or more paths); `escalon judge report` and the `judge_report` job
write it. Test rows never reach `fit_calibration`: callers pass fit (train) rows only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from escalon.errors import ConfigError
from escalon.files import atomic_write

FORMAT = "escalon.judge-calibration/v1"
ANY = "*"
CLIP = (0.005, 0.995)  # a fitted map never claims certainty: a bin of 30 right answers is not proof


@dataclass(frozen=True)
class Row:
    """One logged outcome: the scores of the judges that ran (skipped ones absent), and whether it was right."""

    scores: Mapping[str, float]
    correct: float
    task: str = ""
    rung: str = ""


@dataclass(frozen=True)
class Map:
    judges: frozenset[str]
    rows: int
    method: str  # "isotonic" | "platt" | "identity"
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()
    a: float = 1.0
    b: float = 0.0
    cv_brier: float | None = None

    def __call__(self, raw: float) -> float:
        if self.method == "isotonic":
            value = float(np.interp(raw, self.x, self.y)) if self.x else raw
        elif self.method == "platt":
            value = _sigmoid(self.a * raw + self.b)
        else:
            value = raw
        return float(min(max(value, CLIP[0]), CLIP[1]))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"judges": sorted(self.judges), "rows": self.rows, "method": self.method}
        if self.method == "isotonic":
            out |= {"x": [round(v, 6) for v in self.x], "y": [round(v, 6) for v in self.y]}
        elif self.method == "platt":
            out |= {"a": self.a, "b": self.b}
        if self.cv_brier is not None:
            out["cv_brier"] = round(self.cv_brier, 6)
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Map:
        return cls(frozenset(raw["judges"]), int(raw["rows"]), raw["method"], tuple(raw.get("x", ())),
                   tuple(raw.get("y", ())), float(raw.get("a", 1.0)), float(raw.get("b", 0.0)), raw.get("cv_brier"))


@dataclass(frozen=True)
class Group:
    task: str
    rung: str
    rows: int
    base_rate: float
    weights: Mapping[str, float]
    maps: Mapping[frozenset[str], Map]

    @property
    def key(self) -> str:
        return f"{self.task}|{self.rung}"

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "rung": self.rung, "rows": self.rows, "base_rate": round(self.base_rate, 6),
                "weights": {k: round(v, 6) for k, v in sorted(self.weights.items())},
                "maps": [m.to_json() for m in sorted(self.maps.values(), key=lambda m: (len(m.judges), sorted(m.judges)))]}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Group:
        maps = [Map.from_json(m) for m in raw["maps"]]
        return cls(raw["task"], raw["rung"], int(raw["rows"]), float(raw["base_rate"]),
                   {k: float(v) for k, v in raw["weights"].items()}, {m.judges: m for m in maps})


@dataclass(frozen=True)
class TokenDeferral:
    """The learned deferral judge of §3: logistic regression on token log-prob features (standardised)."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    rows: int = 0

    def predict(self, values: Mapping[str, float]) -> float | None:
        if any(f not in values for f in self.features):
            return None
        z = self.intercept + sum(c * (values[f] - m) / s for f, m, s, c in
                                 zip(self.features, self.mean, self.scale, self.coef))
        return _sigmoid(z)

    def to_json(self) -> dict[str, Any]:
        return {"features": list(self.features), "mean": list(self.mean), "scale": list(self.scale),
                "coef": list(self.coef), "intercept": self.intercept, "rows": self.rows}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> TokenDeferral:
        return cls(tuple(raw["features"]), tuple(raw["mean"]), tuple(raw["scale"]), tuple(raw["coef"]),
                   float(raw["intercept"]), int(raw.get("rows", 0)))


@dataclass(frozen=True)
class Applied:
    confidence: float
    raw: float
    calibrated: bool
    note: str


@dataclass(frozen=True)
class Calibration:
    judges: tuple[str, ...]  # the panel these maps were fitted for: the service's default panel
    groups: tuple[Group, ...]
    deferral: TokenDeferral | None = None
    source: Mapping[str, Any] = field(default_factory=dict)
    name: str = "calibration"

    @property
    def by_key(self) -> dict[tuple[str, str], Group]:
        return {(g.task, g.rung): g for g in self.groups}

    def lookup(self, task: str, rungs: Sequence[str]) -> list[Group]:
        """Groups to try, most specific first: (task, rung), (task, *), (*, rung), (*, *)."""
        groups = self.by_key
        keys: list[tuple[str, str]] = []
        if task:
            keys += [(task, r) for r in rungs if r] + [(task, ANY)]
        keys += [(ANY, r) for r in rungs if r] + [(ANY, ANY)]
        seen, out = set(), []
        for key in keys:
            if key in groups and key not in seen:
                seen.add(key)
                out.append(groups[key])
        return out

    def apply(self, scores: Mapping[str, float], task: str = "", rungs: Sequence[str] = ()) -> Applied:
        """Combine the judges that ran (`scores` holds only those) and calibrate; say which map was used."""
        if not scores:
            return Applied(0.0, 0.0, False, "no judge ran")
        first_weighted: tuple[float, Group] | None = None
        for group in self.lookup(task, rungs):
            used = {j: s for j, s in scores.items() if group.weights.get(j, 0.0) > 0}
            if not used:
                continue
            raw = weighted_mean(used, group.weights)
            first_weighted = first_weighted or (raw, group)
            fitted = group.maps.get(frozenset(used))
            if fitted is not None:
                ignored = sorted(set(scores) - set(used))
                note = (f"{self.name}: group {group.key}, {fitted.method} map over {', '.join(sorted(used))} "
                        f"({fitted.rows} fit rows)")
                if ignored:
                    note += f"; weight 0: {', '.join(ignored)}"
                return Applied(fitted(raw), raw, True, note)
        if first_weighted is not None:
            raw, group = first_weighted
            return Applied(raw, raw, False, f"{self.name}: no map fitted for judges {', '.join(sorted(scores))} "
                                            f"in any group tried; weighted mean of group {group.key}, uncalibrated")
        mean = sum(scores.values()) / len(scores)
        return Applied(mean, mean, False, f"{self.name}: no group for task {task or '-'} and rung "
                                          f"{'/'.join(rungs) or '-'} weighs these judges; plain mean, uncalibrated")

    # ---- persistence -------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "judges": list(self.judges), "source": dict(self.source),
                "groups": [g.to_json() for g in self.groups],
                "deferral": self.deferral.to_json() if self.deferral else None}

    def save(self, path: Path) -> Path:
        return atomic_write(Path(path), json.dumps(self.to_json(), indent=1))

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], name: str = "calibration") -> Calibration:
        if raw.get("format") != FORMAT:
            raise ValueError(f"format is {raw.get('format')!r}, expected {FORMAT!r}")
        deferral = TokenDeferral.from_json(raw["deferral"]) if raw.get("deferral") else None
        return cls(tuple(raw["judges"]), tuple(Group.from_json(g) for g in raw["groups"]), deferral,
                   raw.get("source", {}), name)

    @classmethod
    def load(cls, path: Path) -> Calibration:
        try:
            return cls.from_json(json.loads(Path(path).read_text()), name=Path(path).name)
        except FileNotFoundError:
            raise ConfigError(f"calibration artefact {path} does not exist (ESCALON_JUDGE_CALIBRATION); run "
                              "`escalon judge report` to fit one, or unset the variable") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"calibration artefact {path} is not a valid {FORMAT} file: {exc}") from None

    @classmethod
    def merge(cls, parts: Sequence[Calibration]) -> Calibration:
        """Several artefacts as one (e.g. recorded-benchmark maps and live local-model maps); earlier wins."""
        groups: dict[tuple[str, str], Group] = {}
        judges: list[str] = []
        for part in parts:
            for g in part.groups:
                groups.setdefault((g.task, g.rung), g)
            judges += [j for j in part.judges if j not in judges]
        deferral = next((p.deferral for p in parts if p.deferral), None)
        return cls(tuple(judges), tuple(groups.values()), deferral, {"merged": [p.name for p in parts]},
                   "+".join(p.name for p in parts))


def weighted_mean(scores: Mapping[str, float], weights: Mapping[str, float]) -> float:
    total = sum(weights.get(j, 0.0) for j in scores)
    return sum(weights.get(j, 0.0) * s for j, s in scores.items()) / total


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
