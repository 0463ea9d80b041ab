"""Writing an evaluation report: report.json (everything), report.md (the table), frontier.png (the curves)."""

from __future__ import annotations

import json
from pathlib import Path

ROUTER_ORDER = ("cascade-routing", "cascade-routing@max-cost", "cascade-routing/ex-ante", "hybrid+cascade", "hybrid+cascade@max-cost", "hybrid", "learned", "taxonomy", "routellm-knn",
                "routellm-mf", "frugalgpt", "random-mix", "oracle")


def _usd(value: float | None) -> str:
    return "—" if value is None else f"${value:.6f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def render_markdown(report: dict) -> str:
    best = report["best_single"]
    lo, hi = report["aiq_cost_range_usd"]
    out = [
        f"# Routing evaluation: {report['benchmark']}",
        "",
        f"{report['train_prompts']} training prompts, {report['test_prompts']} test prompts, "
        f"{len(report['models'])} models. Best single model on test: **{best['model']}**, quality "
        f"{_pct(best['quality'])} at {_usd(best['cost_usd'])} per query. AIQ over the single models' cost range "
        f"{_usd(lo)} – {_usd(hi)}.",
        "",
        "| policy | AIQ | quality at best single's cost | cost to match best single | % of its cost | "
        "calls/query at match | max quality | points |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = sorted(report["policies"], key=lambda n: (ROUTER_ORDER.index(n) if n in ROUTER_ORDER else 99, n))
    for name in names:
        p = report["policies"][name]
        if not p.get("applicable", True) or "aiq" not in p:
            out.append(f"| {name} | — | — | — | — | — | — | {p.get('note', 'n/a')} |")
            continue
        pct = p["cost_to_match_best_single_pct"]
        calls = p["calls_per_query_at_match"]
        out.append(f"| {name} | {p['aiq']:.4f} | {_pct(p['quality_at_best_single_cost'])} | "
                   f"{_usd(p['cost_to_match_best_single_usd'])} | {'—' if pct is None else f'{pct:.1f}%'} | "
                   f"{'—' if calls is None else f'{calls:.2f}'} | {_pct(p['max_quality'])} | {len(p['points'])} |")
    ranking = report.get("aiq_ranking_non_oracle", [])
    out += ["", f"Highest AIQ (oracle excluded): {', '.join(ranking[:3])}."]
    if report.get("budget_sweep"):
        out += ["", "## The budget knob (max_cost_usd per request)", "",
                "| max cost | mean cost paid | quality | refused | cut at the bound | spend over budget | dearest spend |",
                "|---:|---:|---:|---:|---:|---:|---:|"]
        for row in report["budget_sweep"]:
            out.append(f"| {_usd(row['max_cost_usd'])} | {_usd(row['mean_cost_usd'])} | {_pct(row['quality'])} | "
                       f"{_pct(row['refused_share'])} | {row.get('cut_at_max_tokens', 0)} | {row['over_budget']} | "
                       f"{_usd(row['max_cost_usd_paid'])} |")
    out += ["", "## Notes", ""]
    out += [f"- {n}" for n in report["notes"]]
    for name in names:
        note = report["policies"][name].get("note")
        if note:
            out.append(f"- {name}: {note}")
    return "\n".join(out) + "\n"


def plot_frontiers(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    styles = {"cascade-routing": ("k", "-", 2.6), "cascade-routing/ex-ante": ("0.35", "--", 1.4),
              "cascade-routing@max-cost": ("k", "-.", 1.4),
              "hybrid+cascade": ("C3", "-", 2.0), "hybrid+cascade@max-cost": ("C9", "-.", 1.4),
              "hybrid": ("C1", "-", 1.6), "learned": ("C2", "--", 1.4),
              "taxonomy": ("C4", "--", 1.4), "routellm-knn": ("C5", ":", 1.6),
              "routellm-mf": ("C8", ":", 1.6), "frugalgpt": ("C6", ":", 1.6),
              "random-mix": ("0.5", "-.", 1.2)}
    for name, (color, line, width) in styles.items():
        p = report["policies"].get(name)
        if not p or not p.get("hull"):
            continue
        pts = sorted((pt["cost_usd"], pt["quality"]) for pt in p["points"])
        ax.scatter([c for c, _ in pts], [q for _, q in pts], s=8, color=color, alpha=0.35)
        hull = _dense(p["hull"])  # straight in linear cost, so it stays right on a log axis
        ax.plot([c for c, _ in hull], [q for _, q in hull], line, color=color, lw=width,
                label=f"{name} (AIQ {p['aiq']:.3f})")
    for name, p in report["policies"].items():
        if name.startswith("single:") and p.get("points"):
            c, q = p["points"][0]["cost_usd"], p["points"][0]["quality"]
            ax.scatter([c], [q], marker="s", color="k", s=22)
            ax.annotate(name[7:].split("/")[-1][:24], (c, q), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if "oracle" in report["policies"] and report["policies"]["oracle"].get("points"):
        o = report["policies"]["oracle"]["points"][0]
        ax.scatter([o["cost_usd"]], [o["quality"]], marker="*", color="gold", edgecolor="k", s=120, label="oracle")
    best = report["best_single"]
    ax.axhline(best["quality"], color="k", lw=0.6, ls=":")
    ax.axvline(best["cost_usd"], color="k", lw=0.6, ls=":")
    ax.axvline(0.3 * best["cost_usd"], color="r", lw=0.6, ls=":", label="30% of best single's cost")
    costs = [pt["cost_usd"] for p in report["policies"].values() for pt in p.get("points", []) if pt["cost_usd"] > 0]
    if costs and max(costs) / max(min(costs), 1e-30) > 20:
        ax.set_xscale("log")
        singles = [p["points"][0]["cost_usd"] for n, p in report["policies"].items()
                   if n.startswith("single:") and p.get("points") and p["points"][0]["cost_usd"] > 0]
        if singles:  # a budget sweep's refusals reach towards zero cost: keep the axis on the models' range
            ax.set_xlim(left=0.3 * min(singles))
    ax.set_xlabel("mean cost per query (USD)")
    ax.set_ylabel("mean quality (test)")
    ax.set_title(f"{report['benchmark']}: cost–quality frontiers (upper hulls) on test")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _dense(hull: list, per_segment: int = 40) -> list:
    out = [tuple(hull[0])]
    for (x1, y1), (x2, y2) in zip(hull, hull[1:]):
        out += [(x1 + (x2 - x1) * t, y1 + (y2 - y1) * t) for t in (i / per_segment for i in range(1, per_segment + 1))]
    return out


def write_report(report: dict, out: Path | str) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "plot": out / "frontier.png"}
    paths["json"].write_text(json.dumps(report, indent=1))
    paths["markdown"].write_text(render_markdown(report))
    plot_frontiers(report, paths["plot"])
    return paths
