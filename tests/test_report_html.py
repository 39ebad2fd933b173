"""Plots and the HTML report of a real tiny run, checked as a reader sees them in headless Chromium."""

from __future__ import annotations

import json
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from test_cli import _config
from typer.testing import CliRunner

from crosslm.cli import app
from crosslm.reporting import plots
from crosslm.reporting.html import write_report
from crosslm.reporting.summary import summarise
from crosslm.rundir import load_metrics, load_samples

CHROMIUM = Path("/usr/bin/chromium")
HOSTILE_TEXT = '<b>not bold</b> & "quoted" <script>alert(1)</script>'
FIGURES = (plots.accuracy_per_round, plots.synthetic_quality, plots.communication_per_round)
# Written into the test's copy of the report only: the page itself has no script.
IMAGE_PROBE = ("<script>window.addEventListener('load', () => { document.body.dataset.images = "
               "[...document.images].map(i => i.complete ? i.naturalWidth : -1).join(','); });</script>")


def _run(tmp: Path, llm: Path, slms: list[Path], data: Path, *options: str) -> Path:
    """A real 1-round run through the CLI; its run directory."""
    config = _config(tmp, llm, slms, rounds=1)
    result = CliRunner().invoke(app, ["run", str(config), "--data-dir", str(data), *options],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return tmp / "run"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_causal_dir, tiny_encoder_dir, shared_data) -> Path:
    """A CrossLM run on tiny models, plus one sample whose text is HTML, as an LLM might write."""
    run = _run(tmp_path_factory.mktemp("report-run"), tiny_causal_dir, [tiny_encoder_dir, tiny_causal_dir],
               shared_data)
    samples_file = run / "rounds" / "001" / "samples.jsonl"
    first = json.loads(samples_file.read_text().splitlines()[0])
    with samples_file.open("a") as handle:
        handle.write(json.dumps({**first, "text": HOSTILE_TEXT, "accepted": False}) + "\n")
    return run


@pytest.fixture(scope="module")
def fedavg_run(tmp_path_factory, tiny_causal_dir, tiny_encoder_dir, shared_data) -> Path:
    """A FedAvg baseline run: its SLM accuracy is the global model's, the clients report none."""
    return _run(tmp_path_factory.mktemp("fedavg-run"), tiny_causal_dir, [tiny_encoder_dir], shared_data,
                "--set", "method=fedavg")


def _baseline(run: Path, target: Path, drop: tuple[str, ...] = ()) -> Path:
    """A round-0-only run directory (what a local-only baseline writes), without the ``drop`` phases."""
    target.mkdir()
    kept = [m for m in load_metrics(run) if m["round"] == 0 and m["phase"] not in drop]
    (target / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in kept))
    return target


class _Page(HTMLParser):
    """What a reader sees: headings, table cells per table, images, tags and the body's attributes."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.images: list[dict] = []
        self.tags: set[str] = set()
        self.body: dict = {}
        self._text: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th", "h2"):
            self._text = []
        elif tag == "img":
            self.images.append(dict(attrs))
        elif tag == "body":
            self.body = dict(attrs)

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th", "h2") and self._text is not None:
            text = "".join(self._text).strip()
            (self.headings if tag == "h2" else self.tables[-1][-1]).append(text)
            self._text = None


def _chromium(profile: Path, *args: str) -> str:
    if not CHROMIUM.is_file():
        pytest.skip(f"headless browser check needs {CHROMIUM} (Debian package 'chromium')")
    done = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


def test_report_renders_in_a_headless_browser(tiny_run, tmp_path):
    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", str(tiny_run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out)
    html = out.read_text()
    static = _Page(html)
    assert "script" not in static.tags and "link" not in static.tags  # self-contained, no JavaScript
    assert [i["src"].startswith("data:image/png;base64,") for i in static.images] == [True] * 3

    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", IMAGE_PROBE + "</body>"))
    dom = _Page(_chromium(tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()))
    assert [int(w) > 0 for w in dom.body["data-images"].split(",")] == [True] * 3
    assert dom.headings == ["Summary", "Per round", "Figures", "Synthetic samples", "Configuration"]
    summary, per_round, *sample_tables = dom.tables
    assert any(row[:1] == ["SLM client-1"] for row in summary)
    assert [row[0] for row in per_round[1:]] == ["0", "1"]
    cells = [cell for table in sample_tables for row in table for cell in row]
    assert HOSTILE_TEXT in cells and "b" not in dom.tags  # shown as text, not interpreted

    shot = tmp_path / "shot.png"
    _chromium(tmp_path / "profile", "--window-size=1400,2400", f"--screenshot={shot}", out.as_uri())
    pixels = imread(shot)[..., :3]
    assert (pixels.min(axis=2) < 0.9).mean() > 0.02  # text and figures, not a blank page
    line_blue = np.abs(pixels - np.array([31, 119, 180]) / 255).max(axis=2) < 0.05  # matplotlib's C0
    assert line_blue.sum() > 100  # the figures' lines were painted, not only their frames


def test_figures_accept_several_seeds_baselines_and_missing_phases(tiny_run, fedavg_run, tmp_path):
    local_only = _baseline(tiny_run, tmp_path / "local-only", drop=("E-llm-task", "E-llm-general"))
    bare = _baseline(tiny_run, tmp_path / "bare", drop=("C1-fit", "E-llm-task", "communication"))
    several = {"crosslm": [tiny_run, tiny_run], "local-only": [local_only], "fedavg": [fedavg_run]}
    for runs in (several, {"bare": [bare]}, {"fedavg": [fedavg_run]}):
        for figure in FIGURES:
            png = figure(runs, tmp_path / "figures" / f"{figure.__name__}-{len(runs)}.png", title="t")
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            height, width, _ = imread(png).shape
            assert height > 200 and width > 300


def test_per_round_series_agree_with_the_summary_and_the_selection_log(tiny_run):
    metrics, samples = load_metrics(tiny_run), load_samples(tiny_run)
    summary = summarise(metrics)
    assert plots.slm_accuracy(metrics)[0] == pytest.approx(summary["slm_acc_local_only_mean"])
    assert plots.slm_accuracy(metrics)[1] == pytest.approx(summary["slm_acc_crosslm_mean"])
    assert plots.llm_accuracy(metrics) == {0: summary["llm_acc_zero_shot"], 1: summary["llm_acc_crosslm"]}
    assert plots.bytes_per_client(metrics)[1] == pytest.approx(summary["bytes_per_client_per_round"])
    select = next(m for m in metrics if m["phase"] == "S4-select")
    hostile = 1  # the fixture's added, rejected sample
    assert plots.accepted_share(samples)[1] == pytest.approx(
        select["accepted"] / (select["candidates"] + hostile))


def test_llm_accuracy_is_measured_alike_before_and_after():
    # an LLM the rounds never trained: raw 62 %, calibrated 82.5 %, in both evaluations
    untouched = {"phase": "E-llm-task", "seconds": 1.0, "accuracy": 0.62, "accuracy_calibrated": 0.825}
    metrics = [{"round": 0, **untouched}, {"round": 2, **untouched}]
    summary = summarise(metrics)
    assert summary["llm_acc_zero_shot"] == summary["llm_acc"] == 0.825
    assert summary["llm_acc_zero_shot_raw"] == 0.62
    assert plots.llm_accuracy(metrics) == {0: 0.825, 2: 0.825}
    trained = {"round": 2, "phase": "E-llm-task", "seconds": 1.0, "accuracy": 0.89,
               "accuracy_calibrated": 0.87}
    assert summarise([metrics[0], trained])["llm_acc"] == 0.89


def test_fedavg_slm_accuracy_is_its_global_model(fedavg_run):
    metrics = load_metrics(fedavg_run)
    global_model = {m["round"]: m["accuracy"] for m in metrics if m["phase"] == "E-slm-global"}
    assert sorted(global_model) == [0, 1]
    assert plots.slm_accuracy(metrics) == global_model
    assert summarise(metrics)["slm_acc"] == global_model[1]


def test_report_of_a_baseline_says_what_it_lacks(tiny_run, tmp_path):
    baseline = _baseline(tiny_run, tmp_path / "local-only", drop=("E-llm-task", "E-llm-general"))
    text = write_report(baseline).read_text()
    page = _Page(text)
    assert page.headings == ["Summary", "Per round", "Figures", "Synthetic samples", "Configuration"]
    assert len(page.images) == 3
    assert "no synthetic samples" in text and "No config.yaml" in text
    summary, per_round = page.tables
    assert [row[0] for row in summary if row[0].startswith("LLM")] == []
    assert "LLM task acc." not in per_round[0] and "SLM test acc., mean" in per_round[0]


def test_report_refuses_what_is_not_a_run_directory(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a run directory" in result.output
    (tmp_path / "metrics.jsonl").write_text('{"round": 0, "phase": "C1-fit"}\n{"round": 1, "pha\n')
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "metrics.jsonl:2" in result.output
