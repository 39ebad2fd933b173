"""Where a run's data comes from: a data directory (config or $CROSSLM_DATA_DIR), else the hub,
else (offline) one error that names both ways. The hub is replaced at its boundary,
``datasets.load_dataset``, by in-memory datasets: there is no network here."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from crosslm.evaluate import load_general_data
from crosslm.tasks.data import DATA_DIR_ENV, DataUnavailable, load_split, resolve_data_dir
from crosslm.tasks.spec import Example, load_task

WIKITEXT_ROWS = [{"text": ""}, {"text": " = Robert Boulter = \n"}, {"text": " He was an actor . \n"}]
ARC_HUB_ROWS = [
    {"id": "q1", "question": "Which is a liquid?",
     "choices": {"text": ["ice", "water", "steam"], "label": ["A", "B", "C"]}, "answerKey": "B"},
    {"id": "q2", "question": "How many legs has a spider?",
     "choices": {"text": ["6", "8"], "label": ["1", "2"]}, "answerKey": "2"},
]
SST2_HUB_ROWS = {"train": [{"sentence": "a warm film", "label": 1, "idx": 0}],
                 "validation": [{"sentence": "a dull film", "label": 0, "idx": 0}]}


class FakeHub:
    """``datasets.load_dataset`` for a few known (name, config, split), recording each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, str]] = []
        self.rows = {("nyu-mll/glue", "sst2", split): rows for split, rows in SST2_HUB_ROWS.items()}
        self.rows[("Salesforce/wikitext", "wikitext-2-raw-v1", "test")] = WIKITEXT_ROWS
        self.rows[("allenai/ai2_arc", "ARC-Easy", "test")] = ARC_HUB_ROWS

    def __call__(self, name: str, config: str | None = None, *, split: str,
                 revision: str | None = None) -> datasets.Dataset:
        self.calls.append((name, config, split))
        return datasets.Dataset.from_list(self.rows[(name, config, split)])


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    fake = FakeHub()
    monkeypatch.setattr(datasets, "load_dataset", fake)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    return fake


def _data_dir(root: Path) -> Path:
    """A folder laid out like shared/data: SST-2, WikiText-2 and ARC-Easy, one row or two each."""
    (root / "sst2").mkdir(parents=True)
    (root / "sst2" / "train.jsonl").write_text('{"text": "local train", "label": 1}\n')
    (root / "sst2" / "dev.jsonl").write_text('{"text": "local dev", "label": 0}\n')
    (root / "wikitext2_raw").mkdir()
    (root / "wikitext2_raw" / "test.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in WIKITEXT_ROWS))
    (root / "arc_easy").mkdir()
    (root / "arc_easy" / "test.jsonl").write_text(json.dumps(
        {"id": "q1", "question": "Which is a liquid?", "choices": ["ice", "water", "steam"],
         "choice_labels": ["A", "B", "C"], "label": 1}) + "\n")
    return root


def test_a_configured_data_dir_is_read_and_the_hub_is_not_asked(hub, tmp_path):
    folder = resolve_data_dir(str(_data_dir(tmp_path / "data")))
    assert load_split(load_task("sst2"), "train", folder) == [Example("local train", 1)]
    general = load_general_data(folder)
    assert general.arc_easy[0].choices == ["ice", "water", "steam"]
    assert hub.calls == []


def test_the_environment_variable_names_the_data_dir(hub, tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(_data_dir(tmp_path / "data")))
    assert load_split(load_task("sst2"), "test", resolve_data_dir(None)) == [Example("local dev", 0)]
    assert hub.calls == []


def test_without_a_data_dir_the_task_and_general_data_come_from_the_hub(hub):
    assert resolve_data_dir(None) is None
    sst2 = load_task("sst2")
    assert load_split(sst2, "train", None) == [Example("a warm film", 1)]
    assert load_split(sst2, "test", None) == [Example("a dull film", 0)]  # the hub's validation split
    general = load_general_data(None)
    assert general.wikitext == "\n\n".join(row["text"] for row in WIKITEXT_ROWS)
    assert [(item.question, item.choices, item.label) for item in general.arc_easy] == [
        ("Which is a liquid?", ["ice", "water", "steam"], 1), ("How many legs has a spider?", ["6", "8"], 1)]
    assert ("nyu-mll/glue", "sst2", "train") in hub.calls
    assert ("allenai/ai2_arc", "ARC-Easy", "test") in hub.calls


def test_a_data_dir_without_the_general_sets_leaves_them_to_the_hub(hub, tmp_path):
    """A user's data directory holds their task only; WikiText-2 and ARC-Easy still come from the hub."""
    assert load_general_data(tmp_path).arc_easy[1].question == "How many legs has a spider?"
    assert ("Salesforce/wikitext", "wikitext-2-raw-v1", "test") in hub.calls


def test_offline_without_a_data_dir_one_error_names_both_ways(monkeypatch):
    """The real ``load_dataset`` in offline mode (the tests' HF_HUB_OFFLINE=1), not a stand-in."""
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    for load, layout in ((lambda: load_split(load_task("sst2"), "train", resolve_data_dir(None)),
                          "sst2/train.jsonl"),
                         (lambda: load_general_data(None), "wikitext2_raw/test.jsonl")):
        with pytest.raises(DataUnavailable) as caught:
            load()
        message = str(caught.value)
        assert f"${DATA_DIR_ENV}" in message and "data_dir" in message and "shared/data" in message
        assert layout in message
        assert "go online" in message and "HF_HUB_OFFLINE" in message
