"""Tasks: specs, reading labelled data files, the real benchmark splits, client partitions."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from crosslm.errors import CrossLMError
from crosslm.tasks.data import (
    DATA_DIR_ENV,
    find_split_file,
    load_split,
    read_examples,
    resolve_data_dir,
)
from crosslm.tasks.partition import partition
from crosslm.tasks.spec import BUILTIN_DIR, Example, builtin_task_names, load_task

BUILTIN = ["ag_news", "sst2", "trec"]


@pytest.fixture(scope="module")
def sst2():
    return load_task("sst2")


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def jsonl(path: Path, rows: list[object]) -> Path:
    return write_lines(path, [json.dumps(row) for row in rows])


# --- task specs --------------------------------------------------------------------------------


def test_builtin_task_names():
    assert builtin_task_names() == BUILTIN


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_spec_loads_and_is_consistent(name):
    task = load_task(name)
    assert task.name == name
    assert task.num_labels == len(task.labels) == len(task.verbalizers)
    assert len(set(task.verbalizers)) == task.num_labels
    assert all(task.seeds[label] for label in task.labels)
    assert set(task.generate_instruction) == set(task.labels)
    assert "{text}" in task.classify_template


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_labels_match_the_shared_data(name, shared_data):
    task = load_task(name)
    names = json.loads((shared_data / (task.folder or name) / "labels.json").read_text())
    assert names == task.labels


def test_load_task_by_path_equals_builtin():
    path = Path(str(BUILTIN_DIR.joinpath("trec.yaml")))
    assert load_task(str(path)) == load_task("trec")


def test_unknown_task_lists_the_builtins():
    with pytest.raises(CrossLMError, match="unknown task 'imdb'") as err:
        load_task("imdb")
    for name in BUILTIN:
        assert name in str(err.value)


def test_classify_prompt_strips_and_fills_the_template(sst2):
    assert sst2.classify_prompt("  a fine film .  \n") == "Review: a fine film .\nSentiment:"
    # Braces in the text are data, not format fields.
    assert sst2.classify_prompt("{label} x") == "Review: {label} x\nSentiment:"


def test_generation_prompt_is_completion_style(sst2):
    prompt = sst2.generation_prompt(1, ["  great fun .", "loved it \n"])
    assert prompt.split("\n") == [
        sst2.generate_instruction["positive"],
        "Review: great fun .",
        "Review: loved it",
        "Review:",
    ]
    # The model continues right after the last item prefix.
    assert prompt.endswith("\nReview:")


def test_generation_prompt_without_demonstrations_uses_the_label(sst2):
    negative = sst2.generation_prompt(0, [])
    assert negative == f"{sst2.generate_instruction['negative']}\nReview:"
    assert negative != sst2.generation_prompt(1, [])


def _spec_yaml(tmp_path: Path, **changes) -> Path:
    raw = yaml.safe_load(BUILTIN_DIR.joinpath("sst2.yaml").read_text(encoding="utf-8"))
    raw.update(changes)
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_user_task_yaml_loads(tmp_path):
    task = load_task(str(_spec_yaml(tmp_path, name="my_sentiment", folder=None)))
    assert task.name == "my_sentiment"
    assert task.labels == ["negative", "positive"]


def test_task_missing_seed_label_is_named(tmp_path):
    path = _spec_yaml(tmp_path, seeds={"negative": ["bad ."]})
    message = r"seeds must have one entry per label; missing \['positive'\]"
    with pytest.raises(CrossLMError, match=message):
        load_task(str(path))


def test_task_unknown_seed_label_is_named(tmp_path):
    seeds = {"negative": ["bad ."], "positive": ["good ."], "neutral": ["ok ."]}
    with pytest.raises(CrossLMError, match=r"unknown \['neutral'\]"):
        load_task(str(_spec_yaml(tmp_path, seeds=seeds)))


def test_task_wrong_verbalizer_count_is_named(tmp_path):
    path = _spec_yaml(tmp_path, verbalizers=[" bad", " good", " meh"])
    with pytest.raises(CrossLMError, match="verbalizers has 3 entries, labels has 2") as err:
        load_task(str(path))
    assert str(path) in str(err.value)


def test_task_template_without_text_is_named(tmp_path):
    with pytest.raises(CrossLMError, match=r"classify_template must contain '\{text\}'"):
        load_task(str(_spec_yaml(tmp_path, classify_template="Review: {review}\nSentiment:")))


def test_task_unknown_field_is_named(tmp_path):
    with pytest.raises(CrossLMError, match="verbalisers"):
        load_task(str(_spec_yaml(tmp_path, verbalisers=[" bad", " good"])))


def test_task_invalid_yaml(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(CrossLMError, match="not valid YAML"):
        load_task(str(path))


# --- reading data files ------------------------------------------------------------------------


def test_read_jsonl(tmp_path, sst2):
    path = jsonl(tmp_path / "d.jsonl", [
        {"text": "a fine film ", "label": 1},
        {"text": "dull", "label": "negative", "extra": "ignored"},
        {"text": "numeric string label", "label": "1"},
    ])
    assert read_examples(path, sst2) == [
        Example("a fine film ", 1),  # text is kept exactly, trailing space included
        Example("dull", 0),
        Example("numeric string label", 1),
    ]


def test_read_jsonl_skips_blank_lines(tmp_path, sst2):
    path = write_lines(tmp_path / "d.jsonl", ['{"text": "a", "label": 0}', "", "   ",
                                             '{"text": "b", "label": 1}'])
    assert [ex.label for ex in read_examples(path, sst2)] == [0, 1]


def test_read_csv(tmp_path, sst2):
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"dull, and long",negative\nfun,1\n"two\nlines",0\n',
                    encoding="utf-8")
    assert read_examples(path, sst2) == [
        Example("dull, and long", 0), Example("fun", 1), Example("two\nlines", 0)
    ]


def test_read_parquet(tmp_path, sst2):
    pa = pytest.importorskip("pyarrow", reason="pyarrow not installed: Parquet is optional")
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["dull", "fun"], "label": [0, 1]}), path)
    assert read_examples(path, sst2) == [Example("dull", 0), Example("fun", 1)]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (['{"text": "a", "label": 1}', '{"text": "b", "label": 1'], r":2: not valid JSON"),
        (['{"text": "a", "label": 1}', '{"label": 1}'], r":2: missing field 'text'"),
        (['{"text": "a", "label": 1}', '{"text": "b"}'], r":2: missing field 'label'"),
        (['{"text": "a", "label": 1}', '{"text": "b", "label": null}'],
         r":2: missing field 'label'"),
        (['{"text": "a", "label": 1}', '{"text": "b", "label": 2}'],
         r":2: field 'label' is 2, outside 0\.\.1 for task 'sst2'"),
        (['{"text": "a", "label": -1}'], r":1: field 'label' is -1, outside 0\.\.1"),
        (['{"text": "a", "label": 1}', '{"text": "b", "label": "neutral"}'],
         r":2: field 'label' is 'neutral', not one of the task's labels"),
        (['{"text": "a", "label": 1.0}'], r":1: field 'label' must be an integer or a label name"),
        (['{"text": "a", "label": true}'], r":1: field 'label' must be an integer or a label name"),
        (['{"text": "a", "label": 1}', '{"text": "  ", "label": 1}'],
         r":2: field 'text' must be a non-empty string"),
        (['{"text": 5, "label": 1}'], r":1: field 'text' must be a non-empty string"),
        (['["a", 1]'], r":1: expected an object"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path, sst2, rows, message):
    path = write_lines(tmp_path / "bad.jsonl", rows)
    with pytest.raises(CrossLMError, match=message) as err:
        read_examples(path, sst2)
    assert str(err.value).startswith(f"{path}:")


def test_bad_line_number_counts_blank_lines(tmp_path, sst2):
    path = write_lines(tmp_path / "bad.jsonl", ['{"text": "a", "label": 1}', "", '{"text": "b"}'])
    with pytest.raises(CrossLMError, match=rf"^{re.escape(str(path))}:3: missing field 'label'"):
        read_examples(path, sst2)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("text,label\nfun,1\n,0\n", r":3: field 'text' must be a non-empty string"),
        ("text,label\nfun,1\ndull\n", r":3: missing field 'label'"),
        ("text\nfun\n", r":2: missing field 'label'"),
        ("text,label\nfun,7\n", r":2: field 'label' is 7, outside 0\.\.1"),
        ('text,label\n"two\nlines",1\nfun,meh\n', r":4: field 'label' is 'meh'"),
    ],
)
def test_bad_csv_names_file_and_line(tmp_path, sst2, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CrossLMError, match=message) as err:
        read_examples(path, sst2)
    assert str(err.value).startswith(f"{path}:")


def test_missing_file(tmp_path, sst2):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(CrossLMError, match=f"data file not found: {re.escape(str(path))}"):
        read_examples(path, sst2)


@pytest.mark.parametrize(("name", "content"), [
    ("empty.jsonl", ""), ("blank.jsonl", "\n  \n"), ("header_only.csv", "text,label\n"),
])
def test_empty_file(tmp_path, sst2, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CrossLMError, match=f"^{re.escape(str(path))}: no examples$"):
        read_examples(path, sst2)


def test_unsupported_suffix(tmp_path, sst2):
    path = write_lines(tmp_path / "d.txt", ["a fine film\t1"])
    with pytest.raises(CrossLMError, match=r"unsupported file type; use one of \.jsonl, \.csv"):
        read_examples(path, sst2)


def test_non_utf8_file_is_a_crosslm_error(tmp_path, sst2):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "caf\xe9", "label": 1}\n')
    with pytest.raises(CrossLMError, match=re.escape(str(path))):
        read_examples(path, sst2)


def test_csv_with_byte_order_mark(tmp_path, sst2):
    path = tmp_path / "excel.csv"
    path.write_text("\ufefftext,label\nfun,1\n", encoding="utf-8")
    assert read_examples(path, sst2) == [Example("fun", 1)]


# --- task splits on disk -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "split", "rows", "label_counts"),
    [
        ("sst2", "train", 67_349, [29_780, 37_569]),
        ("sst2", "test", 872, [428, 444]),
        ("ag_news", "train", 2_000, [488, 511, 498, 503]),
        ("ag_news", "test", 7_600, [1_900] * 4),
        ("trec", "train", 5_452, [86, 1_250, 1_162, 1_223, 835, 896]),
        ("trec", "test", 500, [9, 94, 138, 65, 81, 113]),
    ],
)
def test_load_real_split(shared_data, name, split, rows, label_counts):
    examples = load_split(load_task(name), split, shared_data)
    assert len(examples) == rows
    counts = Counter(ex.label for ex in examples)
    assert [counts[i] for i in range(len(label_counts))] == label_counts


def test_sst2_test_split_is_the_dev_file(shared_data, sst2):
    assert find_split_file(shared_data, sst2, "test") == shared_data / "sst2" / "dev.jsonl"
    first = load_split(sst2, "train", shared_data)[0]
    assert first == Example("hide new secretions from the parental units ", 0)


def test_split_prefers_jsonl_and_falls_back_to_csv(tmp_path, sst2):
    folder = tmp_path / "sst2"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\nfrom csv,1\n", encoding="utf-8")
    assert load_split(sst2, "train", tmp_path) == [Example("from csv", 1)]
    jsonl(folder / "train.jsonl", [{"text": "from jsonl", "label": 0}])
    assert load_split(sst2, "train", tmp_path) == [Example("from jsonl", 0)]


def test_missing_split_names_the_expected_file(tmp_path, sst2):
    (tmp_path / "sst2").mkdir()
    with pytest.raises(CrossLMError, match=r"no test split for task 'sst2'.*sst2/dev\.jsonl"):
        load_split(sst2, "test", tmp_path)


def _sst2_folder_with_one_row(root: Path) -> Path:
    folder = root / "sst2"
    folder.mkdir()
    jsonl(folder / "train.jsonl", [{"text": "fine", "label": 1}])
    return folder


def test_labels_json_mismatch(tmp_path, sst2):
    folder = _sst2_folder_with_one_row(tmp_path)
    (folder / "labels.json").write_text('["positive", "negative"]', encoding="utf-8")
    with pytest.raises(CrossLMError, match="labels.json: labels .* differ from task 'sst2'"):
        load_split(sst2, "train", tmp_path)
    (folder / "labels.json").write_text('["negative", "positive"]', encoding="utf-8")
    assert load_split(sst2, "train", tmp_path) == [Example("fine", 1)]


def test_labels_json_not_json(tmp_path, sst2):
    folder = _sst2_folder_with_one_row(tmp_path)
    (folder / "labels.json").write_text("[negative", encoding="utf-8")
    with pytest.raises(CrossLMError, match="labels.json"):
        load_split(sst2, "train", tmp_path)


def test_no_data_dir_and_no_hub_source(tmp_path):
    task = load_task(str(_spec_yaml(tmp_path, hub=None)))
    with pytest.raises(CrossLMError, match="no local data directory and no hub source"):
        load_split(task, "train", None)


def test_resolve_data_dir(tmp_path, monkeypatch):
    explicit, from_env = tmp_path / "explicit", tmp_path / "env"
    explicit.mkdir()
    from_env.mkdir()
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert resolve_data_dir(None) is None
    assert resolve_data_dir(str(explicit)) == explicit
    monkeypatch.setenv(DATA_DIR_ENV, str(from_env))
    assert resolve_data_dir(None) == from_env
    assert resolve_data_dir(explicit) == explicit  # an explicit directory wins over the env


def test_resolve_missing_data_dir(tmp_path, monkeypatch):
    missing = tmp_path / "missing"
    message = f"data directory not found: {re.escape(str(missing))}"
    with pytest.raises(CrossLMError, match=message):
        resolve_data_dir(missing)
    monkeypatch.setenv(DATA_DIR_ENV, str(missing))
    with pytest.raises(CrossLMError, match=message):
        resolve_data_dir(None)


def test_empty_data_dir_env_means_unset(monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, "")
    assert resolve_data_dir(None) is None


# --- partitioning into clients -----------------------------------------------------------------


def make_pool(num_labels: int = 4, per_label: int = 300) -> list[Example]:
    return [Example(f"example {i}", i % num_labels) for i in range(num_labels * per_label)]


def texts(clients) -> list[str]:
    return [ex.text for client in clients for ex in client.train + client.validation]


def label_skew(clients, num_labels: int) -> float:
    """Mean total-variation distance of each client's label mix from uniform."""
    distances = []
    for client in clients:
        labels = [ex.label for ex in client.train + client.validation]
        share = np.bincount(labels, minlength=num_labels) / len(labels)
        distances.append(0.5 * np.abs(share - 1 / num_labels).sum())
    return float(np.mean(distances))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_partition_sizes_and_disjointness(scheme):
    pool = make_pool()
    clients = partition(pool, 4, num_clients=5, train_per_client=40, validation_per_client=10,
                        scheme=scheme, alpha=0.5, seed=3)
    assert len(clients) == 5
    for client in clients:
        assert (len(client.train), len(client.validation)) == (40, 10)
        assert not {ex.text for ex in client.train} & {ex.text for ex in client.validation}
    assert len(set(texts(clients))) == 5 * 50  # nothing is shared between or within clients
    assert set(texts(clients)) <= {ex.text for ex in pool}


def test_partition_can_use_the_whole_pool():
    pool = make_pool(per_label=25)
    clients = partition(pool, 4, 4, 20, 5, scheme="dirichlet", alpha=0.1, seed=0)
    assert sorted(texts(clients)) == sorted(ex.text for ex in pool)


def test_partition_without_validation():
    clients = partition(make_pool(), 4, 2, 10, 0, scheme="iid", seed=0)
    assert [(len(c.train), len(c.validation)) for c in clients] == [(10, 0), (10, 0)]


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_partition_is_deterministic_per_seed(scheme):
    pool = make_pool()
    args = (pool, 4, 4, 30, 10)
    assert partition(*args, scheme=scheme, seed=7) == partition(*args, scheme=scheme, seed=7)
    assert texts(partition(*args, scheme=scheme, seed=7)) != texts(
        partition(*args, scheme=scheme, seed=8))


def test_dirichlet_clients_are_more_label_skewed_than_iid():
    pool = make_pool()
    for seed in range(5):
        iid = partition(pool, 4, 6, 40, 10, scheme="iid", seed=seed)
        skewed = partition(pool, 4, 6, 40, 10, scheme="dirichlet", alpha=0.1, seed=seed)
        assert label_skew(iid, 4) < 0.2
        assert label_skew(skewed, 4) > 0.4


def test_iid_clients_follow_the_pool_mix():
    pool = [Example(f"e{i}", 0 if i < 900 else 1) for i in range(1000)]  # 90% label 0
    clients = partition(pool, 2, 4, 80, 20, scheme="iid", seed=0)
    share = np.mean([ex.label == 0 for ex in sum((c.train + c.validation for c in clients), [])])
    assert 0.85 < share < 0.95


def test_partition_on_real_sst2(shared_data, sst2):
    pool = load_split(sst2, "train", shared_data)
    clients = partition(pool, 2, 4, 128, 32, scheme="dirichlet", alpha=1.0, seed=0)
    assert all(len(c.train) == 128 and len(c.validation) == 32 for c in clients)
    # SST-2 repeats some phrases, so rows are told apart by identity, not by text.
    chosen = [id(ex) for c in clients for ex in c.train + c.validation]
    assert len(set(chosen)) == 4 * 160
    assert set(chosen) <= {id(ex) for ex in pool}


def test_partition_larger_than_pool_is_an_error():
    with pytest.raises(CrossLMError, match=r"= 260 private examples, but the training pool "
                                           r"has only 200"):
        partition(make_pool(per_label=50), 4, num_clients=2, train_per_client=100,
                  validation_per_client=30)


def test_partition_needs_training_examples():
    with pytest.raises(CrossLMError, match="examples_per_client must be at least 1"):
        partition(make_pool(), 4, num_clients=2, train_per_client=0, validation_per_client=10)
