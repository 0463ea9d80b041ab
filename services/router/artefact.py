"""The router's trained artefact: a versioned folder of plain files (no pickles), and its hot-swapping loader.

    manifest.json   format, version, created, source benchmark fingerprint, encoder, files
    model.json      rungs, families, tasks, taxonomy classes and domain names, familiarity thresholds,
                    cost scale, judge weights, whether the cascade probes
    cascade_routing.json  (when cascade routing beat one-call routing on train) the post-hoc estimators
    arrays.npz      taxonomy heads and domain centroids, profile table, predictor, cost model, memory

`write_artefact` writes into a temporary sibling and renames it into place, then rewrites manifest.json last:
a reader that sees a new manifest sees the files it names. `LiveArtefact` re-reads the folder when its
manifest changes (one stat() per check), like escalon.registry.LiveCatalogue does for rungs; a broken new
artefact keeps the last good one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from escalon.errors import ConfigError
from escalon.judging import JudgeWeights
from escalon.router.cascade_routing import QualityEstimator
from escalon.router.predictor import SuccessPredictor
from escalon.router.routing_model import Familiarity, RoutingModel
from escalon.router.taxonomy import Profile, SoftmaxHead, Taxonomy

FORMAT = "escalon.router-artefact/v1"
ENV = "ESCALON_ROUTER_ARTEFACT"
log = logging.getLogger(__name__)


@dataclass
class Artefact:
    model: RoutingModel
    judge_weights: JudgeWeights | None
    probe: bool
    manifest: dict
    estimator: QualityEstimator | None = None  # cascade routing's post-hoc estimates; None = one-call routing

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", ""))


def write_artefact(folder: Path | str, model: RoutingModel, judge_weights: JudgeWeights | None, probe: bool,
                   source: dict, notes: list[str] = (), estimator: QualityEstimator | None = None) -> Path:
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    version = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    tax, prof, pred = model.taxonomy, model.profile, model.predictor
    arrays = {
        **tax.task.to_arrays("taxonomy.task"), **tax.complexity.to_arrays("taxonomy.complexity"),
        "taxonomy.domain_centroids": tax.domain_centroids,
        "profile.acc": prof.acc, "profile.cost": prof.cost, "profile.count": prof.count,
        "profile.task_count": prof.task_count,
        "predictor.weight": pred.weight, "predictor.prior_scale": pred.prior_scale, "predictor.bias": pred.bias,
        "predictor.rows": pred.rows,
        "cost.intercept": model.cost_intercept, "cost.slope": model.cost_slope, "memory": model.memory,
        "memory_scores": model.memory_scores,
        **({"predictor.neighbour_scale": pred.neighbour_scale} if pred.neighbour_scale is not None else {}),
    }
    meta = {
        "encoder": model.encoder, "rungs": model.rungs, "families": model.families, "tasks": model.tasks,
        "taxonomy": {"task_classes": tax.task.classes, "complexity_classes": tax.complexity.classes,
                     "domain_names": tax.domain_names},
        "profile": {"rungs": prof.rungs, "tasks": prof.tasks},
        "familiarity": vars(model.familiarity), "cost_scale": model.cost_scale, "mean_success": model.mean_success,
        "models": model.models,
        "judge_weights": judge_weights.to_dict() if judge_weights else None, "probe": probe,
    }
    staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp")
    staging.mkdir()
    np.savez_compressed(staging / "arrays.npz", **arrays)
    (staging / "model.json").write_text(json.dumps(meta, indent=1))
    files = ["model.json", "arrays.npz"]
    if estimator is not None:
        (staging / "cascade_routing.json").write_text(json.dumps(estimator.to_dict(), indent=1))
        files.append("cascade_routing.json")
    manifest = {"format": FORMAT, "version": version, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "source": source, "encoder": model.encoder, "rungs": model.rungs, "notes": list(notes),
                "files": files}
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if folder.exists():
        old = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(folder, old)
        os.replace(staging, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, folder)
    return folder


def load_artefact(folder: Path | str, *, field: str = ENV) -> Artefact:
    folder = Path(folder).expanduser()
    unset = f" or unset {ENV}" if field == ENV else ""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, expected {FORMAT!r}")
        meta = json.loads((folder / "model.json").read_text())
        with np.load(folder / "arrays.npz") as data:
            a = {k: data[k] for k in data.files}
        tx = meta["taxonomy"]
        taxonomy = Taxonomy(SoftmaxHead.from_arrays(tx["task_classes"], a, "taxonomy.task"),
                            SoftmaxHead.from_arrays(tx["complexity_classes"], a, "taxonomy.complexity"),
                            a["taxonomy.domain_centroids"], list(tx["domain_names"]))
        profile = Profile(list(meta["profile"]["rungs"]), list(meta["profile"]["tasks"]), a["profile.acc"],
                          a["profile.cost"], a["profile.count"], a["profile.task_count"])
        predictor = SuccessPredictor(list(meta["rungs"]), a["predictor.weight"], a["predictor.prior_scale"],
                                     a["predictor.bias"], a["predictor.rows"], a.get("predictor.neighbour_scale"))
        model = RoutingModel(meta["encoder"], list(meta["rungs"]), list(meta["families"]), list(meta["tasks"]),
                             taxonomy, profile, predictor, a["cost.intercept"], a["cost.slope"],
                             float(meta["cost_scale"]), a["memory"], a["memory_scores"], Familiarity(**meta["familiarity"]),
                             float(meta["mean_success"]), list(meta.get("models", [])))
        weights = JudgeWeights.from_dict(meta["judge_weights"]) if meta.get("judge_weights") else None
        estimator = None
        if "cascade_routing.json" in manifest.get("files", []):
            estimator = QualityEstimator.from_dict(json.loads((folder / "cascade_routing.json").read_text()))
            if estimator.rungs != list(meta["rungs"]):
                raise ValueError("cascade_routing.json names other rungs than model.json")
        if weights is not None and not weights.version:
            weights = JudgeWeights(weights.bias, weights.weights, manifest["version"])
    except FileNotFoundError as exc:
        raise ConfigError(f"no router artefact at {folder} ({Path(exc.filename).name} missing); train one with "
                          f"`escalon eval --benchmark ... --out DIR` (it writes DIR/artefact){unset}",
                          field=field) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"router artefact {folder} is unreadable: {exc}; retrain it{unset}", field=field) from None
    return Artefact(model, weights, bool(meta.get("probe")), manifest, estimator)


def source_fingerprint(path: Path | str) -> dict:
    """What the artefact was trained from: path, size and SHA-256 of the benchmark file."""
    import hashlib

    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path), "size": path.stat().st_size, "sha256": digest.hexdigest()}


class LiveArtefact:
    """The artefact in a folder, re-read when its manifest changes; `current()` costs one stat() per interval."""

    def __init__(self, folder: Path | str, check_interval_s: float = 0.5) -> None:
        self.folder = Path(folder).expanduser()
        self.check_interval_s = check_interval_s
        self._artefact = load_artefact(self.folder)  # at start a bad artefact is a ConfigError
        self._stamp = self._stat()
        self._checked = time.monotonic()

    def _stat(self):
        try:
            st = (self.folder / "manifest.json").stat()
            return (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            return None

    def current(self) -> Artefact:
        now = time.monotonic()
        if now - self._checked < self.check_interval_s:
            return self._artefact
        self._checked = now
        stamp = self._stat()
        if stamp == self._stamp:
            return self._artefact
        try:
            self._artefact = load_artefact(self.folder)
            log.info("router artefact %s loaded (version %s)", self.folder, self._artefact.version)
        except ConfigError as exc:
            log.warning("%s; keeping version %s", exc, self._artefact.version)
        self._stamp = stamp
        return self._artefact
