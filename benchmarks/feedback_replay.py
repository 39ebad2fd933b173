"""Benchmark: the judges' label feedback applied to the very texts plain synthetic data trains on.

Issue #29: on SST-2 and AG News CrossLM's SLMs end level with plain synthetic data. A CrossLM cell
and a plain one differ in three things at once: the texts (its generator learned), which of them
are accepted, and the order C1 sees them in, and over four clients and 200 test texts each of
these moves the SLMs by points. This replays C1 of a finished ``synthetic-no-feedback`` cell from
its shared round 0, on the same accepted texts in the same order, as

- ``plain``: unchanged; it reproduces the cell's client accuracies to the digit (the check);
- ``shuffled-N``: the same texts in another order (what the order alone moves);
- ``drop-flips``: each round the clients judge the texts (C2, then S2 as in a CrossLM round) and
  only those whose aggregated probability of their intended label is at least ``--threshold``
  are kept (S4 of ``crosslm-realism-keep-hard``, without its per-label balancing);
- ``relabel-flips``: every text is kept, and those under the threshold take the judges' top label;

with the cell's C1 budget or those ``--budget LR:EPOCHS`` names. The judged variants train on hard
labels as plain synthetic data does, so only the labels and the texts kept differ. Each model is
scored on held-out real training texts in no silo (``heldout_accuracy.heldout_texts``, what
settings are chosen by) and on the cell's test split. It needs the cells' run directories. From
the repo root:

    crosslm bench benchmarks/feedback-replay.yaml --only 'sst2/*/synthetic-no-feedback/seed-0'
    .venv/bin/python benchmarks/feedback_replay.py --only 'sst2/*/*/seed-0' \
        [--budget 5e-5:3] [--variant plain --variant drop-flips ...]

Rows go to ``benchmarks/results/feedback-replay.json``; a row with the same key is replaced.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from heldout_accuracy import heldout_texts

from crosslm.bench.results import machine_name
from crosslm.bench.runner import cell_status, selected
from crosslm.bench.share import shared_round_zero
from crosslm.bench.spec import Cell, expand, load_spec
from crosslm.client import Client
from crosslm.config import ExperimentConfig
from crosslm.federation_setup import build_client, load_experiment_data
from crosslm.models.classifier import TextClassifier, build_classifier
from crosslm.models.training import accuracy
from crosslm.protocol import FitIns, ScoreIns
from crosslm.rundir import write_atomic
from crosslm.strategies.aggregation import aggregate
from crosslm.synthetic import Candidate
from crosslm.tasks.spec import Example

BENCHMARKS = Path(__file__).parent
OUT = BENCHMARKS / "results" / "feedback-replay.json"
VARIANTS = ("plain", "shuffled-1", "shuffled-2", "drop-flips", "relabel-flips")
Batch = list[tuple[str, int]]  # (text, label) in the order C1 receives them


def with_budget(config: ExperimentConfig, budget: str | None) -> ExperimentConfig:
    """The config with C1's rounds 1..R trained at ``LR:EPOCHS`` (None: as it is)."""
    if budget is None:
        return config
    lr, epochs = budget.split(":")
    training = config.clients.round_training.model_copy(update={"lr": float(lr), "epochs": int(epochs)})
    return config.model_copy(update={"clients": config.clients.model_copy(
        update={"round_training": training})})


def judged(batch: Batch, clients: list[Client], round_: int, variant: str, threshold: float,
           aggregation: str) -> Batch:
    """The batch after the clients' C2 and S2: flips under ``threshold`` dropped or relabelled."""
    replies = {c.name: c.score(ScoreIns(round_, [text for text, _ in batch])) for c in clients}
    scored = aggregate([Candidate(text, label) for text, label in batch], replies, aggregation)
    out = []
    for s in scored:
        if s.quality >= threshold:
            out.append((s.text, s.label))
        elif variant == "relabel-flips":
            out.append((s.text, max(range(len(s.soft_label)), key=s.soft_label.__getitem__)))
    return out


def last_model(client: Client, config: ExperimentConfig) -> TextClassifier:
    """The client's SLM after the last round, from the snapshot its C1 saved."""
    classifier = build_classifier(client.model_name, client.task, config.clients.lora_rank, client.seed,
                                  device=config.clients.device,
                                  lora_target_modules=config.clients.lora_target_modules)
    classifier.load(client.state_dir / f"model-r{config.rounds}.safetensors")
    return classifier


def replay(cell: Cell, variant: str, budget: str | None, threshold: float, texts: list[Example],
           output_dir: Path) -> dict:
    """C1 of rounds 1..R again, from the cell's shared round 0, with ``variant``'s accepted sets."""
    config = with_budget(cell.config, budget)
    data = load_experiment_data(config, resolve_models=False)
    round_zero = Path(shared_round_zero(cell, output_dir).output_dir) / "clients"
    with tempfile.TemporaryDirectory() as state:
        clients = []
        for k in range(config.clients.num_clients):
            client = build_client(config, data, k, Path(state))
            for name in ("model-r0.safetensors", "rounds.json"):
                shutil.copy(round_zero / client.name / name, client.state_dir / name)
            clients.append(client)
        kept, test = [], {}
        for round_ in range(1, config.rounds + 1):
            rows = (cell.path / "clients" / clients[0].name / f"accepted-r{round_}.jsonl").read_text(
                encoding="utf-8").splitlines()
            batch = [(row["text"], row["label"]) for row in map(json.loads, rows)]
            if variant.startswith("shuffled-"):
                random.Random(int(variant.removeprefix("shuffled-"))).shuffle(batch)
            elif variant != "plain":
                batch = judged(batch, clients, round_, variant, threshold, config.aggregation.weights)
            kept.append(len(batch))
            one_hot = [[float(y == label) for y in range(data.task.num_labels)] for _, label in batch]
            ins = FitIns(round_, [t for t, _ in batch], [y for _, y in batch], one_hot)
            test = {c.name: c.fit(ins).test_accuracy for c in clients}
        heldout = {c.name: accuracy(last_model(c, config), texts) for c in clients}
    training = config.clients.round_training
    return {"task": cell.task, "seed": cell.seed, "variant": variant,
            "budget": f"{training.lr:g}:{training.epochs}",
            "threshold": threshold if variant.endswith("-flips") else None, "kept_per_round": kept,
            "heldout_acc_mean": statistics.mean(heldout.values()),
            "test_acc_mean": statistics.mean(test.values()), "heldout": heldout, "test": test}


def table(rows: list[dict], machine: str) -> str:
    """Per task, budget and variant: means over seeds, and the paired change from ``plain``."""
    plain = {(r["task"], r["seed"], r["budget"]): r for r in rows if r["variant"] == "plain"}
    lines = ["# Label feedback on the texts plain synthetic data trains on (issue #29)", "",
             f"- machine: {machine}", "- this file and `feedback-replay.json`: `.venv/bin/python "
             "benchmarks/feedback_replay.py` (each row's command is in the JSON)", "",
             "C1 of finished `synthetic-no-feedback` cells replayed from their round 0 "
             "(`benchmarks/feedback_replay.py`); SLM accuracy in %, mean of four clients, mean over "
             "seeds; held-out: 100 real training texts per label in no silo; change: paired by seed "
             "against `plain` with the same budget.", "",
             "| task | C1 budget (lr:epochs) | variant | seeds | texts kept per round | held-out | "
             "change | change by seed | test | change |", "|---|---|---|---|---|---:|---:|---|---:|---:|"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["budget"], r["variant"]), []).append(r)
    for (task, budget, variant), group in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1],
                                                                                 VARIANTS.index(g[0][2]))):
        pairs = [(r, plain[(task, r["seed"], budget)]) for r in group if (task, r["seed"], budget) in plain]
        mean = lambda values: 100 * statistics.mean(values)  # noqa: E731
        kept = " / ".join(f"{statistics.mean(r['kept_per_round'][i] for r in group):.0f}"
                          for i in range(len(group[0]["kept_per_round"])))
        by_seed = ", ".join(f"{100 * (r['heldout_acc_mean'] - p['heldout_acc_mean']):+.1f}" for r, p in pairs)
        lines.append(
            f"| {task} | {budget} | {variant} | {','.join(str(r['seed']) for r in group)} | {kept} | "
            f"{mean(r['heldout_acc_mean'] for r in group):.1f} | "
            f"{mean(r['heldout_acc_mean'] - p['heldout_acc_mean'] for r, p in pairs):+.1f} | "
            f"{by_seed} | "
            f"{mean(r['test_acc_mean'] for r in group):.1f} | "
            f"{mean(r['test_acc_mean'] - p['test_acc_mean'] for r, p in pairs):+.1f} |")
    return "\n".join(lines) + "\n"


def row_key(row: dict) -> str:
    return f"{row['task']}/seed-{row['seed']}/{row['variant']}/{row['budget']}/{row['threshold']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(BENCHMARKS / "feedback-replay.yaml"))
    parser.add_argument("--results", default=str(BENCHMARKS / "results" / "feedback-replay"))
    parser.add_argument("--only", action="append", default=[], help="cells matching this glob (repeatable)")
    parser.add_argument("--variant", action="append", choices=VARIANTS, help="default: all")
    parser.add_argument("--budget", action="append", default=[],
                        help="C1's LR:EPOCHS in rounds 1..R (repeatable); default: the cell's own")
    parser.add_argument("--threshold", type=float, default=0.25)
    parser.add_argument("--per-label", type=int, default=100)
    args = parser.parse_args()
    loaded = load_spec(args.spec)
    cells = [c for c, chosen in zip(expand(loaded), selected(expand(loaded), args.only), strict=True)
             if chosen and c.method == "synthetic-no-feedback"
             and cell_status(c, Path(args.results)).state == "done"]
    for cell in cells:
        texts = heldout_texts(cell, args.per_label)
        for budget in args.budget or [None]:
            for variant in args.variant or VARIANTS:
                row = replay(cell, variant, budget, args.threshold, texts, Path(loaded.spec.output_dir))
                # read again before each write: replays of other cells may run beside this one
                old = json.loads(OUT.read_text(encoding="utf-8"))["rows"] if OUT.is_file() else []
                row["command"] = shlex.join(["python", *sys.argv])
                rows = {row_key(r): r for r in old} | {row_key(row): row}
                print(f"{row_key(row)}: held-out {100 * row['heldout_acc_mean']:.1f}, "
                      f"test {100 * row['test_acc_mean']:.1f}, kept {row['kept_per_round']}", flush=True)
                result = {"machine": machine_name(), "rows": sorted(rows.values(), key=row_key)}
                write_atomic(OUT, json.dumps(result, indent=2) + "\n")
                write_atomic(OUT.with_suffix(".md"), table(result["rows"], result["machine"]))


if __name__ == "__main__":
    main()
