"""``crosslm bench``: spec errors, cells and skips, dry run, aggregation, real runs on tiny models."""

from __future__ import annotations

import gzip
import json
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from crosslm.bench.estimate import model_seconds
from crosslm.bench.results import FIGURES, QUALITY_HEADER, _quality_tables, machine_name, target_rows
from crosslm.bench.runner import cell_status, estimates
from crosslm.bench.share import shared_round_zero
from crosslm.bench.spec import expand, load_spec
from crosslm.cli import app
from crosslm.errors import CrossLMError
from crosslm.rundir import load_metrics, load_samples

HETEROGENEOUS = ["minilm-l6", "minilm-l6", "smollm2-135m", "smollm2-135m"]


def _write(path: Path, spec: dict | str) -> Path:
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False))
    return path


def _spec(**changes) -> dict:
    spec = {"name": "unit", "output_dir": "out", "tasks": ["sst2"],
            "base": {"rounds": 2, "clients": {"examples_per_client": 64}},
            "settings": {"homogeneous": {"clients": {"slm": ["minilm-l6"]}},
                         "heterogeneous": {"clients": {"slm": HETEROGENEOUS}}},
            "methods": {"fedavg": {"method": "fedavg"},
                        "crosslm-dpo": {"method": "crosslm", "feedback": {"strategy": "dpo"},
                                        "clients": {"examples_per_client": 32}}},
            "seeds": [0, 1]}
    return spec | changes


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


# --- spec validation -------------------------------------------------------------------------------

SPEC_WITH_ERRORS = """\
name: broken
output_dir: out
tasks: [sst2]
methods:
  ok: {}
  bad:
    feedback:
      strategy: ppo
"""


@pytest.mark.parametrize(("text", "expected"), [
    (SPEC_WITH_ERRORS, "spec.yaml:8: methods.bad.feedback.strategy: Input should be"),
    (SPEC_WITH_ERRORS.replace("ok: {}", "ok: {generation: {topk: 3}}"),
     "spec.yaml:5: methods.ok.generation.topk: Extra inputs are not permitted"),
    (SPEC_WITH_ERRORS + "colour: red\n", "spec.yaml:9: colour: Extra inputs are not permitted"),
    (SPEC_WITH_ERRORS.replace("[sst2]", "[sst2, no-such-task]"), "spec.yaml:3: tasks.1: unknown task"),
    (SPEC_WITH_ERRORS.replace("[sst2]", "[sst2, sst2]"), "spec.yaml:3: tasks.1: task 'sst2' is listed twice"),
    (SPEC_WITH_ERRORS.replace("  ok: {}", "  ok: {seed: 4}"), "spec.yaml:5: methods.ok.seed: set per cell"),
    (SPEC_WITH_ERRORS.replace("  ok:", "  not ok:"), "spec.yaml:5: methods.not ok.[key]: String should"),
    (SPEC_WITH_ERRORS.replace("output_dir: out\n", ""), "spec.yaml:1: output_dir: Field required"),
    (SPEC_WITH_ERRORS + "seeds: [1, 2, 1]\n", "spec.yaml:9: seeds.2: seed 1 is listed twice"),
    (SPEC_WITH_ERRORS + "base: {engine: flower}\n", "spec.yaml:9: base.engine: bench runs cells on this"),
    ("- just a list\n", "spec.yaml: the top level must be a mapping"),
])
def test_spec_errors_name_file_field_and_line(tmp_path, text, expected):
    spec = _write(tmp_path / "spec.yaml", text)
    with pytest.raises(CrossLMError) as caught:
        expand(load_spec(spec))
    assert expected in str(caught.value).replace(str(tmp_path) + "/", "")


def test_a_bad_spec_stops_the_command_cleanly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "spec.yaml", SPEC_WITH_ERRORS)
    result = _invoke("bench", "spec.yaml")
    assert result.exit_code == 2
    assert "error: spec.yaml:8: methods.bad.feedback.strategy" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


# --- cells ----------------------------------------------------------------------------------------

def test_cells_merge_base_setting_method_and_cell_in_order(tmp_path):
    cells = expand(load_spec(_write(tmp_path / "spec.yaml", _spec())))
    assert [(c.setting, c.method, c.seed) for c in cells] == [
        (s, m, seed) for s in ("homogeneous", "heterogeneous") for m in ("fedavg", "crosslm-dpo")
        for seed in (0, 1)]
    dpo = next(c for c in cells if (c.setting, c.method, c.seed) == ("heterogeneous", "crosslm-dpo", 1))
    assert dpo.config.rounds == 2  # base
    assert dpo.config.clients.slm == HETEROGENEOUS  # setting
    assert dpo.config.clients.examples_per_client == 32  # the method wins over base
    assert dpo.config.clients.num_clients == 4  # defaults fill the rest of a section
    assert (dpo.config.feedback.strategy, dpo.config.seed, dpo.config.task) == ("dpo", 1, "sst2")
    assert dpo.path == Path("out/sst2/heterogeneous/crosslm-dpo/seed-1")


def test_fedavg_with_two_slm_names_is_skipped_with_the_reason(tmp_path):
    cells = expand(load_spec(_write(tmp_path / "spec.yaml", _spec())))
    skipped = {(c.setting, c.method) for c in cells if c.skip}
    assert skipped == {("heterogeneous", "fedavg")}
    reason = next(c.skip for c in cells if c.skip)
    assert "fedavg" in reason and "smollm2-135m" in reason
    assert all(cell_status(c, tmp_path).state == ("skip" if c.skip else "todo") for c in cells)


# --- estimates and dry run ------------------------------------------------------------------------

def test_size_model_grows_with_the_work_a_method_does(tmp_path, monkeypatch):
    monkeypatch.delenv("CROSSLM_DATA_DIR", raising=False)  # the nominal test size: no data needed
    spec = _spec(methods={"crosslm": {}, "zero-shot": {"method": "llm-zero-shot"}})
    base = {c.method: c.config for c in expand(load_spec(_write(tmp_path / "a.yaml", spec)))}
    more = _spec(methods=spec["methods"], base={"rounds": 4, "clients": {"examples_per_client": 128}})
    bigger = {c.method: c.config for c in expand(load_spec(_write(tmp_path / "b.yaml", more)))}
    assert model_seconds(bigger["crosslm"]) > model_seconds(base["crosslm"])
    # the LLM alone neither trains SLMs nor runs rounds
    assert model_seconds(bigger["zero-shot"]) == model_seconds(base["zero-shot"])
    assert model_seconds(base["zero-shot"]) < model_seconds(base["crosslm"])


def test_dry_run_lists_every_cell_and_writes_nothing(tmp_path, monkeypatch, shared_data):
    monkeypatch.setenv("CROSSLM_DATA_DIR", str(shared_data))
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "spec.yaml", _spec())
    result = _invoke("bench", "spec.yaml", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.output.count(" todo ") == 6 and result.output.count(" skip ") == 2
    assert "6 todo, 2 skip" in result.output
    assert "method fedavg averages weights" in result.output
    assert "Estimated time for the 6 cells to run" in result.output and "an estimate" in result.output
    assert not (tmp_path / "out").exists()


# --- targets --------------------------------------------------------------------------------------

def _row(method: str, **by_seed: dict) -> dict:
    """A matrix.json row with only what the targets read: per seed ("seed_0" -> "0"), its figures."""
    return {"task": "sst2", "setting": "s", "method": method,
            "by_seed": {seed.removeprefix("seed_"): {key: figures.get(key) for key in FIGURES}
                        for seed, figures in by_seed.items()}}


def test_targets_compare_every_crosslm_method_with_its_reference():
    rows = [_row("ours", seed_0=dict(slm_acc=0.74, llm_acc=0.80, wikitext2_ppl=20.5, arc_easy_acc=0.50)),
            _row("local", seed_0=dict(slm_acc=0.70)),
            _row("zs", seed_0=dict(llm_acc=0.70, wikitext2_ppl=20.0, arc_easy_acc=0.50))]
    kinds = {"ours": "crosslm", "local": "local-only", "zs": "llm-zero-shot"}
    status = {r[3]: (r[7], r[6]) for r in target_rows(rows, kinds)}
    assert status["SLM acc >= local-only + 3 pts"] == ("met", "70.0")
    assert status["SLM acc > synthetic-no-feedback"] == ("n/a", "no synthetic-no-feedback result")
    assert status["LLM acc >= llm-zero-shot + 15 pts"][0] == "MISSED"
    assert status["WikiText-2 ppl <= 1.03 x llm-zero-shot"][0] == "met"
    assert status["ARC-Easy >= llm-zero-shot - 1 pt"][0] == "met"


def test_targets_compare_on_the_seeds_both_methods_finished():
    """CrossLM on seed 0 alone against local-only's seeds 0-2: the mean of all three (0.74) would
    call +4 points on seed 0 a miss; paired on seed 0 it is met. Seeds in common with none: n/a."""
    rows = [_row("ours", seed_0=dict(slm_acc=0.74)),
            _row("local", seed_0=dict(slm_acc=0.70), seed_1=dict(slm_acc=0.76), seed_2=dict(slm_acc=0.76)),
            _row("plain", seed_1=dict(slm_acc=0.60))]
    kinds = {"ours": "crosslm", "local": "local-only", "plain": "synthetic-no-feedback"}
    targets = {r[3]: r[4:] for r in target_rows(rows, kinds)}
    assert targets["SLM acc >= local-only + 3 pts"] == ["0", "74.0", "70.0", "met"]
    assert targets["SLM acc > synthetic-no-feedback"] == [
        "", "-", "no common seed with synthetic-no-feedback", "n/a"]


# --- end to end on tiny models --------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_bench(tmp_path_factory, tiny_causal_dir, tiny_encoder_dir, shared_data) -> Path:
    """A workspace (spec.yaml, out/) after a real ``crosslm bench``: sst2, 1 setting, 4 methods, 2 seeds.

    sft and dpo differ in S3 and S4 only, so they start from the same round 0.
    """
    workspace = tmp_path_factory.mktemp("bench")
    base = {
        "rounds": 1,
        "clients": {"num_clients": 2, "examples_per_client": 24, "validation_per_client": 8,
                    "slm": [str(tiny_encoder_dir)], "lora_rank": 2,
                    "local_training": {"lr": 1e-3, "epochs": 2}, "round_training": {"epochs": 1}},
        "server": {"llm": str(tiny_causal_dir), "lora_rank": 2, "classifier_training": {"epochs": 1}},
        "generation": {"samples_per_label": 6, "max_new_tokens": 12, "min_words": 1},
        "selection": {"threshold": 0.0, "top_fraction": 1.0},
        "feedback": {"threshold": 0.0},
        "evaluation": {"slm_test_size": 32, "llm_test_size": 32, "wikitext_tokens": 128,
                       "arc_easy_questions": 4},
    }
    _write(workspace / "spec.yaml", {
        "name": "tiny", "output_dir": "out", "base": base, "tasks": ["sst2"], "settings": {"tiny": {}},
        "methods": {"sft": {"feedback": {"strategy": "filtered-sft"}},
                    "dpo": {"feedback": {"strategy": "dpo"}, "selection": {"top_fraction": 0.5}},
                    "local": {"method": "local-only"}, "zero-shot": {"method": "llm-zero-shot"}},
        "seeds": [0, 1]})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CROSSLM_DATA_DIR", str(shared_data))
        patch.chdir(workspace)
        result = _invoke("bench", "spec.yaml")
    assert result.exit_code == 0, result.output
    return workspace


@pytest.fixture
def workspace(finished_bench, tmp_path, monkeypatch, shared_data) -> Path:
    """A private copy of the finished bench, as the working directory."""
    copy = tmp_path / "workspace"
    shutil.copytree(finished_bench, copy)
    monkeypatch.setenv("CROSSLM_DATA_DIR", str(shared_data))
    monkeypatch.chdir(copy)
    return copy


def _cells(workspace: Path) -> list[Path]:
    return sorted((workspace / "out" / "sst2" / "tiny").glob("*/seed-*"))


def _mtimes(workspace: Path, name: str) -> dict[Path, int]:
    return {cell: (cell / name).stat().st_mtime_ns for cell in _cells(workspace)}


def test_bench_stores_each_cell_as_a_run_directory_and_aggregates(workspace):
    cells = _cells(workspace)
    assert [c.relative_to(workspace / "out/sst2/tiny").as_posix() for c in cells] == [
        f"{method}/seed-{seed}" for method in ("dpo", "local", "sft", "zero-shot") for seed in (0, 1)]
    for cell in cells:
        files = {p.name for p in cell.iterdir()}
        assert {"config.yaml", "metrics.jsonl", "summary.json", "bench.json"} <= files
        bench = json.loads((cell / "bench.json").read_text())
        assert bench["seconds"] > 0 and bench["machine"] == machine_name()
    rows = json.loads((workspace / "out" / "matrix.json").read_text())
    assert [(r["task"], r["setting"], r["method"], r["seeds"]) for r in rows] == [
        ("sst2", "tiny", method, [0, 1]) for method in ("sft", "dpo", "local", "zero-shot")]
    for row in rows:
        summaries = [json.loads((workspace / f"out/sst2/tiny/{row['method']}/seed-{s}/summary.json")
                                .read_text()) for s in (0, 1)]
        for key in ("slm_acc", "llm_acc"):
            values = [s[key] for s in summaries]
            expected = ((None, None) if None in values else
                        (pytest.approx(statistics.mean(values)), pytest.approx(statistics.stdev(values))))
            assert (row[f"{key}_mean"], row[f"{key}_std"]) == expected
        assert row["seconds_mean"] > 0
    rows = {r["method"]: r for r in rows}
    assert rows["dpo"]["bytes_per_client_per_round"] > 0
    assert rows["local"]["bytes_per_client_per_round"] is None
    assert rows["local"]["llm_acc_mean"] is None and rows["zero-shot"]["slm_acc_mean"] is None
    assert rows["zero-shot"]["wikitext2_ppl"] > 0
    markdown = (workspace / "out" / "matrix.md").read_text()
    assert "## sst2" in markdown and "| tiny | dpo | 0,1 |" in markdown
    targets = [line.split(" | ") for line in markdown.split("## Targets")[1].splitlines()
               if line.startswith("| sst2 | tiny | ")]
    status = {(row[2], row[3]): row[7].rstrip(" |") for row in targets}
    assert len(status) == 10  # 5 targets for each crosslm method
    assert status[("sft", "SLM acc >= local-only + 3 pts")] in ("met", "MISSED")
    assert status[("dpo", "LLM acc >= llm-zero-shot + 15 pts")] in ("met", "MISSED")
    assert status[("dpo", "SLM acc > synthetic-no-feedback")] == "n/a"
    assert "command: `crosslm bench spec.yaml`" in markdown and "cores, torch" in markdown
    assert "| sst2 | tiny | local | 0,1 | " in markdown.split("## Data quality and collapsed SLMs")[1]
    for kind in ("accuracy", "synthetic", "communication"):
        assert (workspace / "out" / "plots" / f"sst2-tiny-{kind}.png").stat().st_size > 0
        assert f"plots/sst2-tiny-{kind}.png" in markdown


def _untimed(record: object) -> object:
    """A metrics record without the wall-clock figures, which differ from run to run (so do the
    message sizes by a byte or two: replies carry the client's seconds), and without whether an
    evaluation came from the cache (a later run reads what an earlier one computed)."""
    if isinstance(record, dict):
        return {k: _untimed(v) for k, v in record.items()
                if not k.endswith("seconds") and k not in ("bytes", "cached")}
    return [_untimed(v) for v in record] if isinstance(record, list) else record


def _metrics(cell: Path) -> list:
    return [_untimed(json.loads(line)) for line in (cell / "metrics.jsonl").read_text().splitlines()]


def test_crosslm_cells_share_round_zero_and_end_as_a_run_from_scratch(workspace):
    shared = sorted((workspace / "out/shared-round-zero/sst2/tiny").iterdir())
    assert [p.name.rsplit("-", 1)[0] for p in shared] == ["seed-0", "seed-1"]
    assert all((p / "summary.json").is_file() for p in shared)
    sft, dpo = (_metrics(workspace / f"out/sst2/tiny/{m}/seed-0") for m in ("sft", "dpo"))
    round_zero = [r for r in sft if r["round"] == 0]
    assert round_zero and round_zero == [r for r in dpo if r["round"] == 0]
    config = yaml.safe_load(Path("out/sst2/tiny/dpo/seed-0/config.yaml").read_text())
    _write(Path("scratch.yaml"), config | {"output_dir": "scratch"})
    result = _invoke("run", "scratch.yaml")
    assert result.exit_code == 0, result.output
    assert _metrics(Path("scratch")) == dpo


def test_a_second_run_skips_every_done_cell(workspace):
    before = _mtimes(workspace, "summary.json")
    result = _invoke("bench", "spec.yaml")
    assert result.exit_code == 0, result.output
    assert "8 cells: 8 done, 0 to run" in result.output
    assert _mtimes(workspace, "summary.json") == before
    dry = _invoke("bench", "spec.yaml", "--dry-run")
    assert dry.output.count(" done ") == 8 and "measured" in dry.output


def test_each_finished_cell_is_recorded_beside_the_results_without_its_texts(workspace):
    for cell in _cells(workspace):
        record = workspace / "out" / "cells" / cell.relative_to(workspace / "out").with_suffix(".json.gz")
        packed = json.loads(gzip.decompress(record.read_bytes()))
        assert packed["config"] == (cell / "config.yaml").read_text()
        assert packed["metrics"] == load_metrics(cell)
        for key, name in (("summary", "summary.json"), ("bench", "bench.json")):
            assert packed[key] == json.loads((cell / name).read_text())
        samples = load_samples(cell)
        assert {int(r): rows for r, rows in packed["samples"].items()} == {
            r: [{k: s[k] for k in ("label", "soft_label", "quality", "accepted")} for s in rows]
            for r, rows in samples.items()}
        assert load_samples(record) == {r: [{k: s[k] for k in ("label", "soft_label", "quality", "accepted")}
                                            for s in rows] for r, rows in samples.items()}
        assert all("text" in rows[0] for rows in samples.values())
    assert load_samples(workspace / "out/cells/sst2/tiny/sft/seed-0.json.gz")
    assert list((workspace / "out/cells").rglob("*")) == [
        p for p in (workspace / "out/cells").rglob("*") if p.is_dir() or p.name.endswith(".json.gz")]


def test_a_fresh_checkout_with_only_the_records_skips_every_cell_and_aggregates_the_same(workspace):
    """The run directories stay on the machine that ran them; a clone has the committed records."""
    before = json.loads(Path("out/matrix.json").read_text())
    for folder in ("sst2", "shared-round-zero", "plots"):
        shutil.rmtree(workspace / "out" / folder)
    (workspace / "out/matrix.json").unlink()
    result = _invoke("bench", "spec.yaml")
    assert result.exit_code == 0, result.output
    assert "8 cells: 8 done, 0 to run" in result.output
    assert not (workspace / "out/sst2").exists()
    assert json.loads(Path("out/matrix.json").read_text()) == before
    assert len(list((workspace / "out/plots").glob("*.png"))) == 3


def _unpack(record: Path) -> Path:
    """Write a packed record back in the former folder layout (config.yaml, metrics.jsonl, ...)."""
    packed = json.loads(gzip.decompress(record.read_bytes()))
    folder = record.with_name(record.name.removesuffix(".json.gz"))
    folder.mkdir()
    (folder / "config.yaml").write_text(packed["config"])
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in packed["metrics"]))
    (folder / "summary.json").write_text(json.dumps(packed["summary"]))
    (folder / "bench.json").write_text(json.dumps(packed["bench"]))
    for round_, samples in packed["samples"].items():
        (folder / "rounds" / f"{int(round_):03d}").mkdir(parents=True)
        (folder / "rounds" / f"{int(round_):03d}" / "samples.jsonl").write_text(
            "".join(json.dumps(s) + "\n" for s in samples))
    record.unlink()
    return folder


def test_records_in_the_former_folder_layout_count_and_are_packed_by_the_next_aggregation(workspace):
    before = json.loads(Path("out/matrix.json").read_text())
    packed = sorted((workspace / "out/cells").rglob("*.json.gz"))
    contents = {p: json.loads(gzip.decompress(p.read_bytes())) for p in packed}
    shutil.rmtree(workspace / "out/sst2")
    folders = [_unpack(p) for p in packed]
    dry = _invoke("bench", "spec.yaml", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.output.count(" done ") == 8
    result = _invoke("bench", "spec.yaml", "--aggregate-only")
    assert result.exit_code == 0, result.output
    assert json.loads(Path("out/matrix.json").read_text()) == before
    assert not any(folder.exists() for folder in folders)
    assert {p: json.loads(gzip.decompress(p.read_bytes())) for p in packed} == contents


def test_the_results_say_which_machine_ran_each_cell(workspace):
    """Cells of one matrix may come from several machines (records committed from elsewhere), and
    records written before bench.json kept the machine have none."""
    elsewhere = {"seconds": 5.0, "machine": "Other CPU, 8 cores, torch 2.13.0+cpu"}
    (workspace / "out/sst2/tiny/sft/seed-0/bench.json").write_text(json.dumps(elsewhere))
    (workspace / "out/sst2/tiny/local/seed-1/bench.json").write_text(json.dumps({"seconds": 5.0}))
    result = _invoke("bench", "spec.yaml", "--aggregate-only")
    assert result.exit_code == 0, result.output
    rows = json.loads(Path("out/matrix.json").read_text())
    machines = {(r["method"], seed): cell["machine"] for r in rows for seed, cell in r["by_seed"].items()}
    assert machines.pop(("sft", "0")) == elsewhere["machine"] and machines.pop(("local", "1")) is None
    assert set(machines.values()) == {machine_name()}
    assert (f"- machines: {machine_name()} (6 cells); Other CPU, 8 cores, torch 2.13.0+cpu (1 cell); "
            "not recorded (1 cell)\n") in Path("out/matrix.md").read_text()


def test_a_recorded_cell_whose_config_changed_starts_again_when_asked(workspace):
    shutil.rmtree(workspace / "out/sst2")
    spec = yaml.safe_load(Path("spec.yaml").read_text())
    spec["methods"]["local"]["clients"] = {"patience": 5}
    _write(Path("spec.yaml"), spec)
    dry = _invoke("bench", "spec.yaml", "--dry-run")
    assert dry.output.count(" changed ") == 2 and "only its record is here" in dry.output
    rerun = _invoke("bench", "spec.yaml", "--rerun-changed", "--only", "sst2/tiny/local/seed-0")
    assert rerun.exit_code == 0, rerun.output
    assert (workspace / "out/sst2/tiny/local/seed-0/summary.json").is_file()
    record = workspace / "out/cells/sst2/tiny/local/seed-0.json.gz"
    config = json.loads(gzip.decompress(record.read_bytes()))["config"]
    assert yaml.safe_load(config)["clients"]["patience"] == 5


def test_a_partly_run_cell_resumes_and_keeps_its_finished_rounds(workspace):
    cell = workspace / "out/sst2/tiny/sft/seed-1"
    (cell / "summary.json").unlink()  # as if the run had died during round 1
    (cell / "progress.json").write_text(json.dumps({"completed_round": 0}))
    round_zero = {p: p.stat().st_mtime_ns for p in (cell / "rounds" / "000").rglob("*") if p.is_file()}
    others = {c: (c / "summary.json").stat().st_mtime_ns for c in _cells(workspace) if c != cell}
    statuses = {c.path: cell_status(c, Path("out")).state for c in expand(load_spec("spec.yaml"))}
    assert statuses[Path("out/sst2/tiny/sft/seed-1")] == "resume"
    result = _invoke("bench", "spec.yaml")
    assert result.exit_code == 0, result.output
    assert "1 to run" in result.output
    assert {p: p.stat().st_mtime_ns for p in round_zero} == round_zero
    metrics = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics if m["phase"] == "C1-fit"] == [0, 1]
    assert (cell / "summary.json").is_file()
    assert {c: (c / "summary.json").stat().st_mtime_ns for c in _cells(workspace) if c != cell} == others


def test_only_runs_and_lists_the_cells_matching_its_patterns(workspace):
    for cell in ("sft/seed-0", "dpo/seed-1"):  # as if both had died in round 1
        (workspace / "out/sst2/tiny" / cell / "summary.json").unlink()
    dry = _invoke("bench", "spec.yaml", "--dry-run", "--only", "*/sft/*", "--only", "*/local/seed-1")
    assert dry.exit_code == 0, dry.output
    assert "3 of 8 cells" in dry.output and "2 done, 1 resume" in dry.output
    assert " dpo " not in dry.output
    result = _invoke("bench", "spec.yaml", "--only", "sst2/tiny/sft/*")
    assert result.exit_code == 0, result.output
    assert "2 cells: 1 done, 1 to run" in result.output
    assert (workspace / "out/sst2/tiny/sft/seed-0/summary.json").is_file()
    assert not (workspace / "out/sst2/tiny/dpo/seed-1/summary.json").exists()
    assert "aggregated 7 finished cells of 8" in result.output
    wrong = _invoke("bench", "spec.yaml", "--only", "sst2/sft/*")
    assert wrong.exit_code == 2
    assert "--only 'sst2/sft/*' matches no cell" in wrong.output
    assert "e.g. 'sst2/tiny/sft/seed-0'" in wrong.output


def test_raising_rounds_continues_the_done_cells(workspace):
    spec = yaml.safe_load(Path("spec.yaml").read_text())
    spec["base"]["rounds"] = 2
    _write(Path("spec.yaml"), spec)
    cell = workspace / "out/sst2/tiny/dpo/seed-0"
    round_one = {p: p.stat().st_mtime_ns for p in (cell / "rounds" / "001").rglob("*") if p.is_file()}
    dry = _invoke("bench", "spec.yaml", "--dry-run")
    assert dry.output.count(" resume ") == 8 and "rounds 1 -> 2" in dry.output
    result = _invoke("bench", "spec.yaml")
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics if m["phase"] == "C1-fit"] == [0, 1, 2]
    assert {p: p.stat().st_mtime_ns for p in round_one} == round_one
    assert json.loads((cell / "summary.json").read_text())["rounds"] == 2


def test_a_changed_cell_is_reported_and_rerun_only_when_asked(workspace):
    spec = yaml.safe_load(Path("spec.yaml").read_text())
    spec["methods"]["dpo"]["feedback"]["dpo_beta"] = 0.2
    _write(Path("spec.yaml"), spec)
    before = _mtimes(workspace, "summary.json")
    dry = _invoke("bench", "spec.yaml", "--dry-run")
    assert dry.output.count(" changed ") == 2 and "feedback.dpo_beta: 0.1 -> 0.2" in dry.output
    kept = _invoke("bench", "spec.yaml", "--results", "kept")
    assert kept.exit_code == 1
    assert "2 cells have a stored config that differs" in kept.output
    assert _mtimes(workspace, "summary.json") == before
    assert [r["method"] for r in json.loads(Path("kept/matrix.json").read_text())] == [
        "sft", "local", "zero-shot"]
    rerun = _invoke("bench", "spec.yaml", "--rerun-changed")
    assert rerun.exit_code == 0, rerun.output
    after = _mtimes(workspace, "summary.json")
    assert {c.parent.name for c in after if after[c] != before[c]} == {"dpo"}
    assert yaml.safe_load((workspace / "out/sst2/tiny/dpo/seed-0/config.yaml").read_text())[
        "feedback"]["dpo_beta"] == 0.2


def test_a_setting_a_method_never_reads_leaves_its_cells_and_round_zero_alone(workspace):
    spec = yaml.safe_load(Path("spec.yaml").read_text())
    spec["base"]["server"]["kl_weight"] = 0.5  # S5: crosslm reads it, baselines and round 0 do not
    spec["base"]["clients"]["patience"] = 5  # read by every method with clients
    _write(Path("spec.yaml"), spec)
    cells = expand(load_spec("spec.yaml"))
    states = {(c.method, c.seed): cell_status(c, Path("out")).state for c in cells}
    assert states == {(m, s): "done" if m == "zero-shot" else "changed"
                      for m in ("sft", "dpo", "local", "zero-shot") for s in (0, 1)}
    assert "server.kl_weight: 1.0 -> 0.5" in cell_status(cells[0], Path("out")).detail
    spec["base"]["clients"]["patience"] = 3  # back to the stored value
    _write(Path("spec.yaml"), spec)
    cells = expand(load_spec("spec.yaml"))
    assert {cell_status(c, Path("out")).state for c in cells if c.method == "local"} == {"done"}
    shared = {Path(shared_round_zero(c, Path("out")).output_dir).name for c in cells if c.method == "sft"}
    assert shared == {p.name for p in Path("out/shared-round-zero/sst2/tiny").iterdir()}


def test_a_stopped_cell_resumes_under_a_setting_its_method_never_reads(workspace):
    cell = workspace / "out/sst2/tiny/local/seed-1"
    (cell / "summary.json").unlink()  # as if the run had died before writing its summary
    spec = yaml.safe_load(Path("spec.yaml").read_text())
    spec["base"]["selection"]["threshold"] = 0.3  # S4: local-only never reads it
    _write(Path("spec.yaml"), spec)
    result = _invoke("bench", "spec.yaml", "--only", "sst2/tiny/local/*")
    assert result.exit_code == 0, result.output
    assert (cell / "summary.json").is_file() and not (cell / "bench-error.txt").exists()


def test_aggregate_only_writes_results_where_asked_and_runs_nothing(workspace):
    (workspace / "out/sst2/tiny/sft/seed-0/summary.json").unlink()
    result = _invoke("bench", "spec.yaml", "--aggregate-only", "--results", "elsewhere")
    assert result.exit_code == 0, result.output
    assert not (workspace / "out/sst2/tiny/sft/seed-0/summary.json").exists()
    rows = {r["method"]: r for r in json.loads(Path("elsewhere/matrix.json").read_text())}
    assert rows["sft"]["seeds"] == [1] and rows["sft"]["slm_acc_std"] is None
    assert rows["dpo"]["seeds"] == [0, 1]
    assert (workspace / "elsewhere" / "matrix.md").is_file()


def test_a_failing_cell_is_recorded_and_the_next_one_still_runs(tmp_path, monkeypatch, shared_data):
    monkeypatch.setenv("CROSSLM_DATA_DIR", str(shared_data))
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "spec.yaml", {
        "name": "failing", "output_dir": "out", "tasks": ["sst2"],
        "methods": {"too-big": {"clients": {"examples_per_client": 100000}},
                    "no-model": {"clients": {"slm": ["no-such-model"]}}}})
    result = _invoke("bench", "spec.yaml")
    assert result.exit_code == 1
    assert "2 cells failed" in result.output
    cells = tmp_path / "out" / "sst2" / "default"
    assert "training pool has only" in (cells / "too-big/seed-0/bench-error.txt").read_text()
    assert "unknown model 'no-such-model'" in (cells / "no-model/seed-0/bench-error.txt").read_text()
    dry = _invoke("bench", "spec.yaml", "--dry-run")
    assert "last attempt failed" in dry.output and dry.output.count(" todo ") == 2


def test_estimates_use_the_median_of_measured_cells(workspace):
    spec = yaml.safe_load(Path("spec.yaml").read_text())
    spec["seeds"] = [0, 1, 2]
    _write(Path("spec.yaml"), spec)
    cells = expand(load_spec("spec.yaml"))
    statuses = [cell_status(c, Path("out")) for c in cells]
    by_cell = dict(zip([(c.method, c.seed) for c in cells], estimates(cells, statuses), strict=True))
    measured = [json.loads((workspace / f"out/sst2/tiny/sft/seed-{s}/bench.json").read_text())["seconds"]
                for s in (0, 1)]
    assert by_cell[("sft", 2)] == (pytest.approx(statistics.median(measured)), "median of 2")
    assert by_cell[("sft", 0)] == (measured[0], "measured")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_cell_keeps_the_time_it_ran_and_resumes(workspace, stop):
    cell = workspace / "out/sst2/tiny/sft/seed-1"
    (cell / "summary.json").unlink()  # as if an earlier attempt of 100 s had died during round 1
    (cell / "progress.json").write_text(json.dumps({"completed_round": 0}))
    (cell / "bench.json").write_text(json.dumps({"seconds": 100.0}))
    metrics = cell / "metrics.jsonl"
    round_zero = [line for line in metrics.read_text().splitlines() if json.loads(line)["round"] == 0]
    metrics.write_text("\n".join(round_zero) + "\n")
    # as from a terminal: a shell's background job (`make test &`) inherits SIGINT ignored
    bench = subprocess.Popen([str(Path(sys.executable).parent / "crosslm"), "bench", "spec.yaml"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    started = time.perf_counter()
    while len(metrics.read_text().splitlines()) == len(round_zero):  # round 1 has written its first phase
        assert bench.poll() is None and time.perf_counter() - started < 300, bench.stderr.read()
        time.sleep(0.05)
    bench.send_signal(stop)
    assert bench.wait(timeout=120) != 0
    assert not (cell / "summary.json").exists(), "the cell finished before the signal: no test"
    stopped = json.loads((cell / "bench.json").read_text())["seconds"]
    assert 100.0 < stopped < 100.0 + time.perf_counter() - started
    assert _invoke("bench", "spec.yaml").exit_code == 0
    assert (cell / "summary.json").is_file()
    assert json.loads((cell / "bench.json").read_text())["seconds"] > stopped


def test_the_quality_table_appears_only_for_rows_with_its_figures():
    row = {"task": "sst2", "setting": "s", "method": "m", "seeds": [0, 1]} | dict.fromkeys(QUALITY_HEADER)
    assert _quality_tables([row]) == []  # results from before the meter keep their tables
    table = _quality_tables([row | {"collapsed_clients": 2, "oracle_fidelity_accepted": 0.875}, row])
    assert table[-1] == "| sst2 | s | m | 0,1 | 2 | - | 87.5 | - | - | - | - |" and len(table) == 8
