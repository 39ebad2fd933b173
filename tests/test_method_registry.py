"""crosslm.methods declares every method once; the config, the runner and the bench read it from there."""

from __future__ import annotations

import typing

import pytest

from crosslm.bench.estimate import model_seconds
from crosslm.bench.results import TARGETS, target_rows
from crosslm.bench.share import shared_round_zero
from crosslm.bench.spec import Cell
from crosslm.config import Method, check_method, load_config, settings_not_read
from crosslm.methods import BY_NAME, METHOD_NAMES, METHODS

ONE_CLIENT_SMALL = ["evaluation.slm_test_size=10", "evaluation.llm_test_size=10"]


def test_names_are_unique_and_the_config_accepts_exactly_them():
    assert len(BY_NAME) == len(METHODS)
    assert typing.get_args(Method) == METHOD_NAMES


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_method_is_accepted_and_known_to_the_bench(name, tmp_path):
    method = BY_NAME[name]
    meter = ["evaluation.data_quality=true"] if method.oracle_filtered else []  # its filter is the meter's
    config = load_config(None, [f"method={name}", *ONE_CLIENT_SMALL, *meter])
    check_method(config)  # in-process with one SLM: every method runs
    assert method.server or method.clients
    assert model_seconds(config) > 0
    not_read = settings_not_read(name)
    assert all(not s.startswith("@") for s in not_read)  # every group expanded
    assert ("server" in not_read) == (not method.server)
    assert ("clients" in not_read) == (not method.reads_silos)
    cell = Cell("sst2", "s", name, 0, config.model_copy(update={"output_dir": str(tmp_path / "cell")}))
    assert (shared_round_zero(cell, tmp_path) is not None) == (method.rounds == "generate")


def test_the_targets_name_registered_methods_and_check_the_method_under_test():
    assert {reference for _, _, reference, _ in TARGETS} <= set(METHOD_NAMES)
    empty = {f: None for f in ("slm_acc", "llm_acc", "wikitext2_ppl", "arc_easy_acc")}
    rows = [{"task": "t", "setting": "s", "method": name, "by_seed": {"0": dict(empty)}}
            for name in METHOD_NAMES]
    checked = {row[2] for row in target_rows(rows, {name: name for name in METHOD_NAMES})}
    assert checked == {m.name for m in METHODS if m.checked}
