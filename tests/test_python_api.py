"""The Python entry point: the README's "Python quick start" runs as written (on tiny models), and
``import crosslm`` stays light until an export is used."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import crosslm
from crosslm import api

ROOT = Path(__file__).resolve().parents[1]


def readme_python_quick_start() -> str:
    """The first Python code block of the README's "Python quick start" section."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python quick start", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_readme_quick_start_runs(tmp_path, monkeypatch, capsys, tiny_causal_dir, tiny_encoder_dir):
    """As a user runs it from the repository root, with tiny models and a temporary run directory
    put in as config settings over whatever the README's code asks for."""
    tiny = {"server.llm": tiny_causal_dir, "clients.slm": [tiny_encoder_dir], "output_dir": tmp_path / "run",
            "server.lora_rank": 2, "server.classifier_training.epochs": 1, "clients.local_training.epochs": 2,
            "generation.samples_per_label": 4, "generation.max_new_tokens": 12, "generation.min_words": 1,
            "selection.threshold": 0, "feedback.threshold": 0}
    run_experiment = api.run_experiment

    def on_tiny_models(config, *args, **kwargs):
        return run_experiment(api.configure(config, tiny), *args, **kwargs)

    monkeypatch.setattr(api, "run_experiment", on_tiny_models)
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("CROSSLM_DATA_DIR", raising=False)  # the example task brings its own data
    exec(compile(readme_python_quick_start(), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "round 1: S1-generate" in printed  # progress lines
    assert re.search(r"SLM accuracy \d\.\d\d -> \d\.\d\d", printed)
    assert re.search(r"LLM accuracy \d\.\d\d -> \d\.\d\d", printed)
    assert (tmp_path / "run" / "summary.json").is_file()


def test_configure_layers_settings_over_a_file_or_a_config():
    config = crosslm.configure(ROOT / "examples" / "support_tickets.yaml",
                               {"rounds": 1, "clients.slm": ["x"]})
    assert (config.rounds, config.clients.slm, config.clients.num_clients) == (1, ["x"], 2)
    again = crosslm.configure(config, {"seed": 7})
    assert again == config.model_copy(update={"seed": 7})
    assert isinstance(again, crosslm.ExperimentConfig)
    with pytest.raises(crosslm.CrossLMError, match="generation.topk"):
        crosslm.configure(None, {"generation.topk": 3})


def test_import_crosslm_loads_no_model_library():
    """The exports load on first use: the command line and Flower's processes import crosslm too."""
    code = "import sys, crosslm; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT / "src")}).stdout
    assert out.strip() == "[]"
    assert set(crosslm.__all__) >= {"run", "configure", "ExperimentConfig", "load_config", "run_experiment"}
