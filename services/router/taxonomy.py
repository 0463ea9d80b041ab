"""The taxonomy router's model (docs/routing.md, Taxonomy and profiling): labels learned from examples, and the profiling table.

Four dimensions, none of them a keyword list:
- task_type: the benchmark's task names are free labels; a multinomial logistic head on the query embedding
  gives p_fast(task | x). The slow path, for prompts with no free label (the router's own logs), is
  escalon.offline.labelling.labeller: where max p_fast < 0.8 a local LLM scores the top-3 labels and is fused 50/50
  with p_fast (`escalon taxonomy label`); it labels offline, the router's per-request path stays p_fast.
- complexity: low / medium / high, labelled from outcomes — a training query's difficulty is the share of
  rungs that failed it (tertiles over the training set) — and predicted by a second head.
- domain: clusters of the training embeddings (k-means), each named after the task most of it holds.
- format: the answer format the judges parse (number, choice, yes/no, code, free text), read from the
  prompt's shape by the judge service's own parser.

A cell is (task_type, complexity). The profiling table holds every rung's mean score, mean cost and row
count per cell; Φ(i, x) = Σ p(task|x) p(complexity|x) acc[i][task, complexity], where a cell with fewer than
MIN_CELL_ROWS observed rows for a rung backs off to that rung's task marginal, and a task with too few to
its overall mean (a rung with no rows at all: the mean of all rungs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.answers import infer_answer_type

MIN_CELL_ROWS = 30
COMPLEXITY = ("low", "medium", "high")
FORMATS = {
    AnswerType.ANSWER_TYPE_NUMBER: "short_number",
    AnswerType.ANSWER_TYPE_CHOICE: "multiple_choice",
    AnswerType.ANSWER_TYPE_YES_NO: "yes_no",
    AnswerType.ANSWER_TYPE_CODE: "code",
    AnswerType.ANSWER_TYPE_FREE_TEXT: "free_text",
}


@dataclass
class SoftmaxHead:
    """A fitted multinomial logistic head, stored as plain arrays (no pickled estimator)."""

    classes: list[str]
    weight: np.ndarray  # [d, K]
    bias: np.ndarray  # [K]

    def proba(self, x: np.ndarray) -> np.ndarray:
        if len(self.classes) == 1:
            return np.ones((len(x), 1))
        z = x @ self.weight + self.bias
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    @classmethod
    def fit(cls, x: np.ndarray, labels: np.ndarray, c: float = 10.0) -> SoftmaxHead:
        from sklearn.linear_model import LogisticRegression

        classes = sorted({str(v) for v in labels})
        if len(classes) == 1:
            return cls(classes, np.zeros((x.shape[1], 1)), np.zeros(1))
        y = np.array([classes.index(str(v)) for v in labels])
        clf = LogisticRegression(C=c, max_iter=2000).fit(x, y)
        if len(classes) == 2:  # sklearn keeps one column for two classes
            w = np.stack([-clf.coef_[0] / 2, clf.coef_[0] / 2], axis=1)
            b = np.array([-clf.intercept_[0] / 2, clf.intercept_[0] / 2])
        else:
            w, b = clf.coef_.T.copy(), clf.intercept_.copy()
        return cls(classes, w, b)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.weight": self.weight, f"{prefix}.bias": self.bias}

    @classmethod
    def from_arrays(cls, classes: list[str], arrays, prefix: str) -> SoftmaxHead:
        return cls(list(classes), np.asarray(arrays[f"{prefix}.weight"]), np.asarray(arrays[f"{prefix}.bias"]))


def complexity_labels(scores: np.ndarray, edges: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Difficulty = 1 − mean observed score over rungs; tertile edges from these rows unless given."""
    with np.errstate(invalid="ignore"):
        difficulty = 1.0 - np.nanmean(scores, axis=1)
    difficulty = np.where(np.isnan(difficulty), 0.5, difficulty)
    if edges is None:
        edges = np.quantile(difficulty, [1 / 3, 2 / 3])
        if edges[0] == edges[1]:  # heavily tied outcomes: split at the value itself
            edges = np.array([edges[0] - 1e-9, edges[1]])
    return np.digitize(difficulty, edges, right=True), edges


def answer_format(prompt: str) -> str:
    return FORMATS.get(infer_answer_type(prompt), "free_text")


@dataclass
class Taxonomy:
    task: SoftmaxHead
    complexity: SoftmaxHead  # classes are "0", "1", "2" (low, medium, high)
    domain_centroids: np.ndarray  # [D, d], unit rows
    domain_names: list[str]

    @classmethod
    def fit(cls, x: np.ndarray, tasks: np.ndarray, complexity: np.ndarray, n_domains: int | None = None,
            seed: int = 0) -> Taxonomy:
        from sklearn.cluster import KMeans

        task = SoftmaxHead.fit(x, tasks, c=10.0)
        cx = SoftmaxHead.fit(x, complexity.astype(str), c=1.0)
        k = n_domains or int(np.clip(round(np.sqrt(len(x) / 20)), 2, 32))
        k = max(1, min(k, len(x)))
        km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(x)
        centroids = km.cluster_centers_ / np.maximum(np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True), 1e-9)
        names = []
        for d in range(k):
            members = tasks[km.labels_ == d]
            if len(members) == 0:
                names.append(f"cluster-{d}")
                continue
            values, counts = np.unique(members, return_counts=True)
            names.append(f"{values[counts.argmax()]}~{d}")
        return cls(task, cx, centroids.astype(np.float32), names)

    def task_proba(self, x: np.ndarray) -> np.ndarray:
        return self.task.proba(x)

    def complexity_proba(self, x: np.ndarray) -> np.ndarray:
        """[n, 3] over low/medium/high (classes absent from training get probability 0)."""
        p = self.complexity.proba(x)
        out = np.zeros((len(x), len(COMPLEXITY)))
        for j, c in enumerate(self.complexity.classes):
            out[:, int(c)] = p[:, j]
        return out

    def domain(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sims = x @ self.domain_centroids.T
        best = sims.argmax(axis=1)
        return best, sims[np.arange(len(x)), best]


@dataclass
class Profile:
    """acc / cost / count per (task, complexity, rung); see the module docstring for the back-off."""

    rungs: list[str]
    tasks: list[str]
    acc: np.ndarray  # [T, 3, R] after back-off
    cost: np.ndarray  # [T, 3, R] mean cost (back-off like acc)
    count: np.ndarray  # [T, 3, R] observed rows in the cell itself
    task_count: np.ndarray  # [T, R]

    @classmethod
    def fit(cls, rungs: list[str], tasks: list[str], task_idx: np.ndarray, complexity: np.ndarray,
            scores: np.ndarray, costs: np.ndarray, min_rows: int = MIN_CELL_ROWS) -> Profile:
        T, K, R = len(tasks), len(COMPLEXITY), len(rungs)
        observed = ~np.isnan(scores)
        s0, c0 = np.where(observed, scores, 0.0), np.where(observed, costs, 0.0)
        overall_n = observed.sum(0)
        all_mean = s0.sum() / max(observed.sum(), 1)
        overall = np.where(overall_n > 0, s0.sum(0) / np.maximum(overall_n, 1), all_mean)
        overall_cost_all = c0.sum() / max(observed.sum(), 1)
        overall_cost = np.where(overall_n > 0, c0.sum(0) / np.maximum(overall_n, 1), overall_cost_all)
        acc = np.zeros((T, K, R))
        cost = np.zeros((T, K, R))
        count = np.zeros((T, K, R), dtype=np.int64)
        task_count = np.zeros((T, R), dtype=np.int64)
        for t in range(T):
            rows_t = task_idx == t
            n_t = observed[rows_t].sum(0)
            task_count[t] = n_t
            acc_t = np.where(n_t >= min_rows, s0[rows_t].sum(0) / np.maximum(n_t, 1), overall)
            cost_t = np.where(n_t > 0, c0[rows_t].sum(0) / np.maximum(n_t, 1), overall_cost)
            for k in range(K):
                rows = rows_t & (complexity == k)
                n = observed[rows].sum(0)
                count[t, k] = n
                acc[t, k] = np.where(n >= min_rows, s0[rows].sum(0) / np.maximum(n, 1), acc_t)
                cost[t, k] = np.where(n > 0, c0[rows].sum(0) / np.maximum(n, 1), cost_t)
        return cls(list(rungs), list(tasks), acc, cost, count, task_count)

    def phi(self, p_task: np.ndarray, p_cx: np.ndarray) -> np.ndarray:
        """Expected accuracy of every rung under the taxonomy posterior: [n, R]."""
        return np.einsum("nt,nk,tkr->nr", p_task, p_cx, self.acc)

    def profiled(self, task: np.ndarray, cx: np.ndarray, min_rows: int = MIN_CELL_ROWS) -> np.ndarray:
        """Whether the argmax cell (or its task marginal) holds enough rows for every rung."""
        return np.array([(self.count[t, k] >= min_rows).all() or (self.task_count[t] >= min_rows).all()
                         for t, k in zip(task, cx)])
