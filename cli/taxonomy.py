"""`escalon taxonomy label`: task labels for prompts that carry none (e.g. the router's logged queries), so they can
join the taxonomy's training data. Offline: the classifier and the labelling LLM run in-process."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXAMPLES = """examples:
  escalon taxonomy label --in logs/queries.jsonl --out labelled.jsonl \\
      --benchmark /work/shared/data/routing/llmrouter-dcrouter
  escalon taxonomy label --in prompts.parquet --column text --out labelled.jsonl \\
      --benchmark data/llmrouter-dcrouter --labeller gemma3-270m --encoder static
  escalon taxonomy label --in q.jsonl --out l.jsonl --artefact reports/dcrouter/artefact \\
      --descriptions tasks.json --labeller my-remote-rung      # a catalogue rung behind an OpenAI-compatible API

Each output line is the input row plus label, probability, source ("classifier", or "llm:<rung>" where the
classifier's top probability was under --threshold and the LLM chose among its --top-k labels) and
distribution (the probabilities the label was chosen from). With --gold-column the agreement with that column
is printed at the end.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from escalon.offline.labelling.labeller import DEFAULT_EXAMPLES, DEFAULT_THRESHOLD, DEFAULT_TOP_K, DEFAULT_WEIGHT
    from escalon.offline.labelling.scorers import MODES

    taxonomy = sub.add_parser("taxonomy", help="the taxonomy's labels: label prompts with task types")
    actions = taxonomy.add_subparsers(dest="taxonomy_command", required=True, metavar="ACTION")
    p = actions.add_parser(
        "label", help="label prompts with the taxonomy's task classes (fast classifier, LLM where it is unsure)",
        description="Label every prompt with one of the taxonomy's task classes. The fast classifier (the taxonomy's "
                    "task head on sentence embeddings) keeps its label where its top probability reaches "
                    "--threshold; elsewhere an LLM scores each of the classifier's --top-k labels, shown with the "
                    "training prompts of that label nearest to the query, and the best of λ·p_llm + (1−λ)·p_fast "
                    "wins. Local rungs score with their own forward pass (how well each label's examples predict "
                    "the query); other rungs (OpenAI-compatible endpoints) answer a lettered choice read from "
                    "their top log-probs. No text is generated, so every label is one of the classes.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--in", dest="input", type=Path, required=True,
                   help="prompts to label: .jsonl (one object a line) or .parquet, with a text column (--column)")
    p.add_argument("--out", type=Path, required=True, help="labelled rows, .jsonl (written whole at the end)")
    p.add_argument("--column", default="prompt", help="the text column of --in [prompt]")
    p.add_argument("--benchmark", type=Path,
                   help="benchmark (shared routing format) whose train split fits the classifier; its task names "
                        "are the labels and its prompts the examples the LLM is shown")
    p.add_argument("--artefact", type=Path,
                   help="instead of --benchmark: a router artefact's taxonomy (no training prompts: the LLM sees the "
                        "labels' names and --descriptions) [$ESCALON_ROUTER_ARTEFACT]")
    p.add_argument("--descriptions", type=Path, help="JSON object label → one-line description shown to the LLM")
    p.add_argument("--labeller", default="gemma3-270m",
                   help="catalogue rung that labels the unsure prompts: smollm2-135m, gemma3-270m, or any local or "
                        "OpenAI-compatible rung; none = the classifier alone [gemma3-270m]")
    p.add_argument("--mode", choices=MODES, default="auto",
                   help="how the LLM scores: channel (how well each label's examples predict the query's tokens; "
                        "local rungs), label (the likelihood of each label's name tokens; local rungs), letters (a "
                        "lettered choice read from the top log-probs; any rung); auto = channel on local rungs, "
                        "letters on remote ones [auto]")
    p.add_argument("--encoder", default="all-MiniLM-L6-v2",
                   help="sentence encoder of the classifier with --benchmark: minilm, static "
                        "(tokenlearn-static-10k-64d) or hashing-trigram-256 [all-MiniLM-L6-v2]")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"the classifier's label stands when its top probability reaches this [{DEFAULT_THRESHOLD}]")
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K,
                   help=f"how many of the classifier's labels the LLM chooses among [{DEFAULT_TOP_K}]")
    p.add_argument("--weight", type=float, default=DEFAULT_WEIGHT,
                   help=f"λ, the LLM's share of the fused distribution (1 = the LLM decides) [{DEFAULT_WEIGHT}]")
    p.add_argument("--examples", type=int, default=DEFAULT_EXAMPLES,
                   help=f"training prompts shown per candidate label [{DEFAULT_EXAMPLES}]")
    p.add_argument("--gold-column", help="a column holding the true label: print the agreement with it")
    p.add_argument("--threads", type=int, help="torch threads of the labelling model [the rung's CPUs]")
    p.add_argument("--catalogue", type=Path, help="rung catalogue YAML [$ESCALON_CATALOGUE or the packaged one]")
    p.add_argument("--cache-dir", type=Path,
                   help="embedding cache, keyed by a hash of encoder and text [$ESCALON_DATA_DIR/embeddings]")


def run(args: argparse.Namespace) -> int:
    import os

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from escalon.config import ServiceSettings, load_settings
    from escalon.errors import ConfigError
    from escalon.offline.labelling import labeller as lab, rows as files, scorers

    console = Console(stderr=True)
    rows = files.read_prompts(args.input, args.column)
    if args.out.suffix.lower() not in (".jsonl", ".ndjson"):
        raise ConfigError(f"--out {args.out} should be a .jsonl file (one labelled row a line)", field="out")
    if args.gold_column and not any(args.gold_column in r for r in rows):
        raise ConfigError(f"{args.input} has no {args.gold_column!r} column to compare with", field="gold-column")
    descriptions = files.read_descriptions(args.descriptions)
    settings = load_settings(ServiceSettings)
    cache = args.cache_dir or settings.data_dir / "embeddings"
    artefact = args.artefact or (Path(os.environ["ESCALON_ROUTER_ARTEFACT"])
                                 if os.environ.get("ESCALON_ROUTER_ARTEFACT") else None)
    if args.benchmark is not None:
        console.log(f"fitting the taxonomy on {args.benchmark}'s train split ({args.encoder})")
        classifier = lab.TaskClassifier.from_benchmark(args.benchmark, args.encoder, cache, descriptions)
    elif artefact is not None:
        classifier = lab.TaskClassifier.from_artefact(artefact, cache, descriptions)
    else:
        raise ConfigError("give --benchmark (a benchmark whose train split fits the classifier) or --artefact (a "
                          "router artefact from `escalon eval`)", field="benchmark")
    scorer = None
    if args.labeller.lower() != "none":
        console.log(f"loading labeller rung {args.labeller}")
        scorer = scorers.make_scorer(args.labeller, mode=args.mode, catalogue=args.catalogue or settings.catalogue,
                                 torch_threads=args.threads)
    labeller = lab.LLMLabeller(classifier, scorer, threshold=args.threshold, top_k=args.top_k, weight=args.weight,
                               examples=args.examples)
    prompts = [r[args.column] for r in rows]
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[asked]} asked the LLM"), console=console, transient=True) as bar:
        task = bar.add_task("labelling", total=len(prompts), asked=0)
        asked = 0

        def advance(result: lab.Labelled) -> None:
            nonlocal asked
            asked += result.source != "classifier"
            bar.update(task, advance=1, asked=asked)

        results = labeller.label(prompts, progress=advance)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row, result in zip(rows, results):
            f.write(json.dumps(files.output_row(row, result), default=str) + "\n")
    tmp.replace(args.out)
    llm = [r for r in results if r.source != "classifier"]
    line = f"labelled {len(results)} prompts → {args.out}: {len(results) - len(llm)} by the classifier"
    if llm:
        line += f", {len(llm)} by {llm[0].source} ({sum(r.seconds for r in llm) / len(llm):.2f} s each)"
    console.print(line)
    if args.gold_column:
        known = [(row.get(args.gold_column), r.label) for row, r in zip(rows, results)
                 if row.get(args.gold_column) is not None]
        agree = sum(str(g) == lab_ for g, lab_ in known)
        share = agree / max(len(known), 1)
        sys.stdout.write(f"agreement with {args.gold_column}: {agree}/{len(known)} = {share:.3f}\n")
    return 0
