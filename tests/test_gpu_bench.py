"""benchmarks/gpu.py runs end to end at tiny sizes on the CPU (``--tiny``), into a temp path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIELDS = {"gpu", "llm_params", "s1_tokens_per_s", "hf_generate_tokens_per_s", "s3_step_seconds",
          "s5_step_seconds", "c2_texts_per_s", "peak_gpu_memory_gb", "round_seconds", "command"}


def test_tiny_gpu_benchmark_writes_one_row_per_llm_size(tmp_path, shared_data):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/gpu.py"), "--tiny", "--sizes", "qwen2.5-1.5b",
         "--work", str(tmp_path / "work"), "--out", str(out), "--data-dir", str(shared_data)],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["llm"] for row in rows] == ["qwen2.5-1.5b"]
    row = rows[0]
    assert set(row) >= FIELDS and row["tiny"] is True and "--tiny" in row["command"]
    assert row["s1_tokens_per_s"] > 0 and row["hf_generate_tokens_per_s"] > 0 and row["round_seconds"] > 0
    assert set(row["c2_texts_per_s"]) == {"minilm-size", "qwen2.5-0.5b"}
    assert row["peak_gpu_memory_gb"] is None and row["gpu"].startswith("none")  # no GPU figures on a CPU
