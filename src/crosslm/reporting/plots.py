"""Figures of runs as PNG files, read only from run directories (for ``crosslm report`` and benchmarks).

Each figure takes method label -> run directories (one per seed) and draws, per label, the mean over
its runs, shaded +- one standard deviation when there are several. A label with round 0 only (a
baseline such as local-only or zero-shot) is a dashed horizontal line. Any phase may be missing:
baselines have no LLM, no synthetic data or no traffic, and a panel without data says so.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from crosslm.reporting.summary import llm_task_accuracy
from crosslm.rundir import load_metrics, load_samples

Runs = Mapping[str, Sequence[Path]]
PerRound = dict[int, float]
Samples = dict[int, list[dict]]


def _records(metrics: list[dict], phase: str) -> list[dict]:
    return [m for m in metrics if m["phase"] == phase]


def client_accuracy(metrics: list[dict]) -> dict[str, PerRound]:
    """Client id -> round -> SLM test accuracy (rounds where the client reported one)."""
    out: dict[str, PerRound] = {}
    for m in _records(metrics, "C1-fit"):
        for cid, reply in m["clients"].items():
            if reply.get("test_accuracy") is not None:
                out.setdefault(cid, {})[m["round"]] = reply["test_accuracy"]
    return out


def slm_accuracy(metrics: list[dict]) -> PerRound:
    """Round -> mean SLM test accuracy over the clients that reported one; FedAvg: its global model's."""
    per_round: dict[int, list[float]] = {}
    for accuracies in client_accuracy(metrics).values():
        for round_, accuracy in accuracies.items():
            per_round.setdefault(round_, []).append(accuracy)
    means = {r: statistics.mean(v) for r, v in per_round.items()}
    global_model = {m["round"]: m["accuracy"] for m in _records(metrics, "E-slm-global")}
    return dict(sorted((means | global_model).items()))


def llm_accuracy(metrics: list[dict]) -> PerRound:
    """Round -> LLM task accuracy, the better of raw and calibrated, as in the summary."""
    return {m["round"]: llm_task_accuracy(m) for m in _records(metrics, "E-llm-task")}


def bytes_per_client(metrics: list[dict], directions: Sequence[str] = ("down", "up")) -> PerRound:
    """Round -> bytes per client (mean over clients) in the given directions."""
    return {m["round"]: statistics.mean(sum(b[d] for d in directions) for b in m["bytes"].values())
            for m in _records(metrics, "communication") if m["bytes"]}


def accepted_share(samples: Samples) -> PerRound:
    """Round -> share of the scored synthetic samples that S4 accepted."""
    return {r: statistics.mean(s["accepted"] for s in rows) for r, rows in samples.items() if rows}


def slm_agreement(samples: Samples) -> PerRound:
    """Round -> share of samples whose aggregated soft label has its maximum at the intended label."""
    return {r: statistics.mean(int(np.argmax(s["soft_label"])) == s["label"] for s in rows)
            for r, rows in samples.items() if rows}


def _mean_std(per_run: list[PerRound]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Rounds, mean and std over the runs (a run missing a round does not count for it)."""
    rounds = sorted(set().union(*per_run))
    if not rounds:
        return None
    values = np.array([[run.get(r, np.nan) for r in rounds] for run in per_run])
    return np.array(rounds), np.nanmean(values, axis=0), np.nanstd(values, axis=0)


def _draw(ax: Axes, label: str, color: str, per_run: list[PerRound], **style) -> set[int]:
    """One label's mean line (+- std band for several runs); the rounds it has (none: nothing drawn)."""
    series = _mean_std(per_run)
    if series is None:
        return set()
    rounds, mean, std = series
    band = sum(bool(run) for run in per_run) > 1
    if rounds.tolist() == [0]:
        ax.axhline(mean[0], color=color, label=label, **{"ls": "--", **style})
        if band:
            ax.axhspan(mean[0] - std[0], mean[0] + std[0], color=color, alpha=0.15)
    else:
        ax.plot(rounds, mean, color=color, label=label, **{"marker": "o", **style})
        if band:
            ax.fill_between(rounds, mean - std, mean + std, color=color, alpha=0.2)
    return set(rounds.tolist())


def _panel(ax: Axes, series: dict[str, list[PerRound]], colors: dict[str, str], title: str,
           ylabel: str, empty: str) -> bool:
    """A panel with one line per label, or the ``empty`` message when no label has data."""
    ax.set_title(title)
    drawn = set().union(*(_draw(ax, label, colors[label], per_run) for label, per_run in series.items()))
    if not drawn:
        _say(ax, empty)
        return False
    if len(drawn) == 1:  # a single round: centre it instead of a sub-integer axis
        ax.set_xlim(min(drawn) - 1, min(drawn) + 1)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return True


def _say(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_axis_off()


def _figure(panels: int, title: str) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(5.5 * panels, 4.2), layout="constrained")
    if title:
        fig.suptitle(title)
    return fig, list(fig.subplots(1, panels, squeeze=False)[0])


def _save(fig: Figure, out: Path) -> Path:
    for ax in fig.axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=100)
    return out


def _colors(runs: Runs) -> dict[str, str]:
    """A label keeps its colour in every figure, also where other labels have no data."""
    return {label: f"C{k % 10}" for k, label in enumerate(runs)}


def _metrics(runs: Runs) -> dict[str, list[list[dict]]]:
    return {label: [load_metrics(path) for path in paths] for label, paths in runs.items()}


def accuracy_per_round(runs: Runs, out: Path, title: str = "") -> Path:
    """LLM task accuracy and mean SLM test accuracy per round; for a single run each client thinly too."""
    metrics, colors = _metrics(runs), _colors(runs)
    fig, (llm_ax, slm_ax) = _figure(2, title)
    _panel(llm_ax, {label: [llm_accuracy(m) for m in ms] for label, ms in metrics.items()}, colors,
           title="LLM", ylabel="task accuracy (round 0: best zero-shot)",
           empty="no LLM evaluation in these runs")
    _panel(slm_ax, {label: [slm_accuracy(m) for m in ms] for label, ms in metrics.items()}, colors,
           title="SLMs", ylabel="test accuracy (mean of clients; FedAvg: global)",
           empty="no SLM evaluation in these runs")
    single = [m for ms in metrics.values() for m in ms]
    if len(single) == 1:
        for k, (cid, accuracy) in enumerate(client_accuracy(single[0]).items()):
            rounds = sorted(accuracy)
            slm_ax.plot(rounds, [accuracy[r] for r in rounds], color=f"C{(k + 1) % 10}", lw=0.8,
                        ls=":", marker=".", label=cid)
    return _save(fig, out)


def synthetic_quality(runs: Runs, out: Path, title: str = "") -> Path:
    """Accepted share and SLM agreement per round, and quality histograms of accepted vs rejected samples."""
    colors = _colors(runs)
    samples = {label: [load_samples(path) for path in paths] for label, paths in runs.items()}
    samples = {label: per_run for label, per_run in samples.items() if any(per_run)}
    if not samples:
        fig, (ax,) = _figure(1, title)
        _say(ax, "no synthetic samples in these runs")
        return _save(fig, out)
    fig, (share_ax, agree_ax, hist_ax) = _figure(3, title)
    _panel(share_ax, {label: [accepted_share(s) for s in ss] for label, ss in samples.items()}, colors,
           title="accepted by S4", ylabel="share of scored samples", empty="")
    share_ax.set_ylim(0.0, 1.02)
    _panel(agree_ax, {label: [slm_agreement(s) for s in ss] for label, ss in samples.items()}, colors,
           title="SLMs agree with intended label", ylabel="share (argmax of soft label)", empty="")
    agree_ax.set_ylim(0.0, 1.02)
    bins = np.linspace(0.0, 1.0, 21)
    for label, per_run in samples.items():
        rows = [s for run in per_run for round_rows in run.values() for s in round_rows]
        for accepted, ls in ((True, "-"), (False, "--")):
            quality = [s["quality"] for s in rows if s["accepted"] == accepted]
            if quality:
                hist_ax.hist(quality, bins=bins, histtype="step", color=colors[label], ls=ls,
                             label=f"{label} {'accepted' if accepted else 'rejected'}")
    hist_ax.set_title("quality, all rounds")
    hist_ax.set_xlabel("quality (weighted SLM probability of intended label)")
    hist_ax.set_ylabel("samples")
    return _save(fig, out)


def communication_per_round(runs: Runs, out: Path, title: str = "") -> Path:
    """Bytes per client per round, both directions (with one label also down and up apart), log scale."""
    metrics, colors = _metrics(runs), _colors(runs)
    fig, (ax,) = _figure(1, title)
    if not _panel(ax, {label: [bytes_per_client(m) for m in ms] for label, ms in metrics.items()}, colors,
                  title="communication", ylabel="bytes per client", empty="no communication in these runs"):
        return _save(fig, out)
    if len(metrics) == 1:
        (label, ms), = metrics.items()
        for k, direction in enumerate(("down", "up"), start=1):
            _draw(ax, f"{label} {direction}", f"C{k}", [bytes_per_client(m, [direction]) for m in ms],
                  lw=0.8, ls=":", marker=".")
    ax.set_yscale("log")
    return _save(fig, out)
