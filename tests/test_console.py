"""A run's console holds crosslm's own progress; other libraries' output goes to RUN_DIR/third_party.log.

Besides what the tiny models really print (transformers' "Loading weights" bars, PEFT's and
transformers' deprecation warnings), a stand-in for the model check emits one of each kind of
third-party output before the run directory exists, so the test does not hang on which warnings
this transformers happens to give.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import tqdm.auto
from test_cli import _config
from typer.testing import CliRunner

from crosslm import federation_setup
from crosslm.cli import app
from crosslm.third_party import THIRD_PARTY_LOG, ThirdPartyOutput

WARNING = "`old_argument` is deprecated"
LOG_LINE = "a transformers log line"
BAR = "Converting and de-quantizing"
THIRD_PARTY_MARKS = (WARNING, LOG_LINE, BAR, "FutureWarning", "Loading weights", "it/s]")


@pytest.fixture
def noisy_model_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checking a model also prints as a GGUF conversion does: a bar, a log line and a warning."""
    from transformers.utils import logging as hf_logging

    resolve = federation_setup.resolve_model

    def noisy_resolve(name: str):
        for _ in tqdm.auto.tqdm(range(3), desc=BAR):
            pass
        hf_logging.get_logger("transformers.modeling_gguf_pytorch_utils").warning(LOG_LINE)
        warnings.warn(WARNING, FutureWarning, stacklevel=1)
        return resolve(name)

    monkeypatch.setattr(federation_setup, "resolve_model", noisy_resolve)


@pytest.fixture
def runner(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("CROSSLM_DATA_DIR", str(shared_data))
    return CliRunner()


def test_a_run_shows_its_own_progress_and_logs_the_rest(runner, tmp_path, tiny_causal_dir,
                                                        tiny_encoder_dir, noisy_model_check):
    config = _config(tmp_path, tiny_causal_dir, [tiny_encoder_dir, tiny_causal_dir], rounds=0)
    result = runner.invoke(app, ["run", str(config)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "checking data and models" in result.output and "round 0: C1-fit" in result.output
    assert "client-1: FitIns" in result.output
    for mark in THIRD_PARTY_MARKS:
        assert mark not in result.output
    log = (tmp_path / "run" / THIRD_PARTY_LOG).read_text(encoding="utf-8")
    for mark in (WARNING, LOG_LINE, BAR, "Loading weights"):  # held until the run directory existed
        assert mark in log


def test_verbose_leaves_third_party_output_on_the_console(runner, tmp_path, tiny_causal_dir,
                                                          tiny_encoder_dir, noisy_model_check):
    config = _config(tmp_path, tiny_causal_dir, [tiny_encoder_dir], rounds=0)
    with pytest.warns(FutureWarning, match=WARNING):  # pytest takes warnings before any console
        result = runner.invoke(app, ["run", str(config), "--verbose"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert BAR in result.output and "Loading weights" in result.output
    assert not (tmp_path / "run" / THIRD_PARTY_LOG).exists()


def test_output_of_a_run_that_stops_before_its_directory_goes_to_the_model_cache(crosslm_cache):
    with pytest.raises(RuntimeError), ThirdPartyOutput():
        warnings.warn(WARNING, FutureWarning, stacklevel=1)
        raise RuntimeError("the model does not fit")
    assert WARNING in (crosslm_cache / THIRD_PARTY_LOG).read_text(encoding="utf-8")


def test_a_stderr_handler_made_during_a_run_writes_to_stderr_afterwards(tmp_path, capsys):
    """As datasets does on its first import: its handler takes the sys.stderr of that moment."""
    import logging

    with ThirdPartyOutput() as third_party:
        third_party.to_file(tmp_path / THIRD_PARTY_LOG)
        late = logging.StreamHandler()
        print("during", file=sys.stderr)
    late.stream.write("after\n")
    assert "during" in (tmp_path / THIRD_PARTY_LOG).read_text(encoding="utf-8")
    assert capsys.readouterr().err == "after\n"
