"""S1 clean-up, S2 aggregation and S4 selection, on hand-computed examples."""

from __future__ import annotations

import pytest

from crosslm.protocol import ScoreRes
from crosslm.strategies.aggregation import aggregate, client_weights
from crosslm.strategies.selection import select
from crosslm.synthetic import Candidate, ScoredSample, clean

PROMPTS = ["a tedious , overlong mess that never finds its footing .",
           "Short excerpts from movie reviews."]


def texts(candidates: list[Candidate]) -> list[str]:
    return [c.text for c in candidates]


# -- S1 clean ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "?!. ,"])
def test_clean_drops_empty(text: str):
    kept, dropped = clean([Candidate(text, 0)], min_words=3, prompt_texts=PROMPTS)
    assert kept == [] and dropped == {"empty": 1}


def test_clean_drops_too_short():
    kept, dropped = clean([Candidate("great film", 1), Candidate("a great film", 1)], 3, PROMPTS)
    assert texts(kept) == ["a great film"]
    assert dropped == {"too short": 1}


def test_clean_drops_repetitive():
    cands = [Candidate("bad bad bad bad bad film", 0), Candidate("so so so good good good", 1),
             Candidate("one two three four five six", 1)]
    kept, dropped = clean(cands, 3, PROMPTS)
    assert texts(kept) == ["one two three four five six"]
    assert dropped == {"repetitive": 2}


def test_clean_drops_prompt_echo_ignoring_case_and_punctuation():
    cands = [Candidate("A tedious, overlong mess that never finds its footing!", 0),
             Candidate("short excerpts from MOVIE reviews", 1),
             Candidate("a tedious mess that finds its footing late", 0)]
    kept, dropped = clean(cands, 3, PROMPTS)
    assert texts(kept) == ["a tedious mess that finds its footing late"]
    assert dropped == {"prompt echo": 2}


def test_clean_drops_duplicates_ignoring_case_and_punctuation_keeping_the_first():
    cands = [Candidate("Great film, really!", 1), Candidate("great film really", 1),
             Candidate("GREAT   FILM ... REALLY", 0), Candidate("great film indeed", 1)]
    kept, dropped = clean(cands, 3, PROMPTS)
    assert kept == [Candidate("Great film, really!", 1), Candidate("great film indeed", 1)]
    assert dropped == {"duplicate": 2}


def test_clean_counts_every_reason_and_keeps_order_and_labels():
    cands = [
        Candidate("a warm and funny film", 1),
        Candidate("", 0),
        Candidate("meh", 0),
        Candidate("A warm and funny film.", 1),
        Candidate("dull dull dull dull dull dull", 0),
        Candidate("", 1),
        Candidate("short excerpts from movie reviews", 0),
        Candidate("the plot makes no sense", 0),
    ]
    kept, dropped = clean(cands, 3, PROMPTS)
    assert kept == [Candidate("a warm and funny film", 1), Candidate("the plot makes no sense", 0)]
    assert dropped == {"empty": 2, "too short": 1, "duplicate": 1, "repetitive": 1, "prompt echo": 1}
    assert len(kept) + sum(dropped.values()) == len(cands)


# -- S2 aggregate -------------------------------------------------------------------------------


def reply(probs: list[list[float]], num_examples: int = 10, val_accuracy: float = 0.5) -> ScoreRes:
    return ScoreRes(1, probs, num_examples, val_accuracy)


def test_uniform_weights():
    weights = client_weights("uniform", {"a": reply([], 10), "b": reply([], 30), "c": reply([], 60)})
    assert weights == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})


def test_data_size_weights_follow_the_number_of_examples():
    weights = client_weights("data_size", {"a": reply([], 10), "b": reply([], 30), "c": reply([], 60)})
    assert weights == pytest.approx({"a": 0.1, "b": 0.3, "c": 0.6})
    assert sum(weights.values()) == pytest.approx(1.0)


def test_val_accuracy_weights_follow_the_validation_accuracy():
    replies = {"a": reply([], 100, 0.9), "b": reply([], 100, 0.6), "c": reply([], 100, 0.0)}
    weights = client_weights("val_accuracy", replies)
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights["a"] > weights["b"] > weights["c"] >= 0
    assert weights["a"] / weights["b"] == pytest.approx(0.9 / 0.6)
    assert weights["c"] < 1e-5


# Client a: 10 examples, client b: 30, so data_size weights are 0.25 and 0.75.
PROBS_A = [[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]
PROBS_B = [[0.7, 0.3], [0.6, 0.4], [0.1, 0.9]]
CANDIDATES = [Candidate("x0", 0), Candidate("x1", 1), Candidate("x2", 1)]


def test_aggregate_hand_computed():
    scored = aggregate(CANDIDATES, {"a": reply(PROBS_A, 10), "b": reply(PROBS_B, 30)}, "data_size")
    assert [s.text for s in scored] == ["x0", "x1", "x2"]
    assert [s.label for s in scored] == [0, 1, 1]
    # s_j = 0.25 p_a + 0.75 p_b; q_j = s_j[y_j]
    assert [s.soft_label for s in scored] == [pytest.approx([0.75, 0.25]), pytest.approx([0.5, 0.5]),
                                              pytest.approx([0.2, 0.8])]
    assert [s.quality for s in scored] == pytest.approx([0.75, 0.5, 0.8])
    # The (population) standard deviation of the clients' probabilities of the intended label.
    assert [s.disagreement for s in scored] == pytest.approx([0.1, 0.2, 0.2])
    assert scored[1].client_probs == {"a": pytest.approx([0.2, 0.8]), "b": pytest.approx([0.6, 0.4])}


def test_aggregate_uniform_is_the_mean_and_ignores_reply_order():
    forward = aggregate(CANDIDATES, {"a": reply(PROBS_A), "b": reply(PROBS_B)}, "uniform")
    backward = aggregate(CANDIDATES, {"b": reply(PROBS_B), "a": reply(PROBS_A)}, "uniform")
    assert [s.quality for s in forward] == pytest.approx([0.8, 0.6, 0.7])
    assert [s.quality for s in forward] == pytest.approx([s.quality for s in backward])
    assert [s.soft_label for s in forward] == [pytest.approx(s.soft_label) for s in backward]


def test_agreeing_clients_have_no_disagreement():
    scored = aggregate(CANDIDATES, {"a": reply(PROBS_A), "b": reply(PROBS_A)}, "uniform")
    assert [s.disagreement for s in scored] == pytest.approx([0.0, 0.0, 0.0])
    assert [s.soft_label for s in scored] == [pytest.approx(p) for p in PROBS_A]


# -- S4 select -----------------------------------------------------------------------------------


def sample(name: str, label: int, quality: float) -> ScoredSample:
    return ScoredSample(name, label, quality, [1 - quality, quality], 0.0)


def names(samples: list[ScoredSample]) -> list[str]:
    return sorted(s.text for s in samples)


POOL = [sample("n1", 0, 0.9), sample("n2", 0, 0.8), sample("n3", 0, 0.3),
        sample("p1", 1, 0.95), sample("p2", 1, 0.7), sample("p3", 1, 0.2)]


def test_select_by_threshold():
    assert names(select(POOL, 2, threshold=0.5, top_fraction=1.0, balance=False)) == [
        "n1", "n2", "p1", "p2"]
    assert names(select(POOL, 2, threshold=0.85, top_fraction=1.0, balance=False)) == ["n1", "p1"]


def test_select_top_fraction_rounds_up_per_label():
    many = [sample(f"n{i}", 0, q) for i, q in enumerate([0.1, 0.5, 0.9, 0.7, 0.3])]
    # ceil(0.3 * 5) = 2: the two best of label 0.
    assert names(select(many, 2, threshold=0.0, top_fraction=0.3, balance=False)) == ["n2", "n3"]
    # ceil(0.01 * 5) = 1
    assert names(select(many, 2, threshold=0.0, top_fraction=0.01, balance=False)) == ["n2"]


def test_select_balance_keeps_the_minimum_across_labels_and_the_best_of_each():
    pool = [sample("n1", 0, 0.9), sample("n2", 0, 0.8), sample("n3", 0, 0.75),
            sample("p1", 1, 0.7), sample("p2", 1, 0.1)]
    assert names(select(pool, 2, threshold=0.6, top_fraction=1.0, balance=True)) == ["n1", "p1"]
    assert names(select(pool, 2, threshold=0.6, top_fraction=1.0, balance=False)) == [
        "n1", "n2", "n3", "p1"]


def test_select_a_label_with_nothing_acceptable_empties_everything_when_balanced():
    pool = [sample("n1", 0, 0.9), sample("n2", 0, 0.8), sample("p1", 1, 0.4)]
    assert select(pool, 2, threshold=0.5, top_fraction=1.0, balance=True) == []
    assert names(select(pool, 2, threshold=0.5, top_fraction=1.0, balance=False)) == ["n1", "n2"]
    # A label with no samples at all counts the same.
    assert select(POOL, 3, threshold=0.0, top_fraction=1.0, balance=True) == []


def three_labels(name: str, label: int, soft_label: list[float]) -> ScoredSample:
    return ScoredSample(name, label, soft_label[label], soft_label, 0.0)


def test_select_top_label_keeps_what_the_judges_rank_first_at_any_q():
    pool = [three_labels("a1", 0, [0.4, 0.3, 0.3]), three_labels("a2", 0, [0.3, 0.4, 0.3]),
            three_labels("b1", 1, [0.1, 0.8, 0.1]), three_labels("c1", 2, [0.35, 0.3, 0.35 + 1e-6])]
    assert names(select(pool, 3, threshold="top-label", top_fraction=1.0, balance=False)) == [
        "a1", "b1", "c1"]
    assert names(select(pool, 3, threshold=0.5, top_fraction=1.0, balance=False)) == ["b1"]
    assert names(select(pool, 3, threshold="top-label", top_fraction=1.0, balance=True)) == [
        "a1", "b1", "c1"]


def test_on_two_labels_top_label_is_more_often_than_not():
    pool = [three_labels(f"s{i}", i % 2, [1 - q, q] if i % 2 else [q, 1 - q])
            for i, q in enumerate([0.9, 0.51, 0.49, 0.2, 0.6, 0.45])]
    kept = names(select(pool, 2, threshold="top-label", top_fraction=1.0, balance=False))
    assert kept == names(select(pool, 2, threshold=0.5, top_fraction=1.0, balance=False))
    assert kept == ["s0", "s1", "s4"]


def test_select_relabels_the_judges_flips_instead_of_dropping_them():
    pool = [three_labels("a", 0, [0.7, 0.2, 0.1]), three_labels("b", 0, [0.1, 0.8, 0.1]),
            three_labels("c", 1, [0.3, 0.4, 0.3]), three_labels("d", 2, [0.45, 0.35, 0.2])]
    dropped = select(pool, 3, threshold=0.5, top_fraction=1.0, balance=False)
    assert [(s.text, s.label) for s in dropped] == [("a", 0)]
    # b is kept under the label the judges give 0.8; no label of c or d reaches 0.5
    kept = select(pool, 3, threshold=0.5, top_fraction=1.0, balance=False, flips="relabel")
    assert sorted((s.text, s.label, s.quality) for s in kept) == [("a", 0, 0.7), ("b", 1, 0.8)]
    # with top-label every text stays, under the label ranked first
    everything = select(pool, 3, threshold="top-label", top_fraction=1.0, balance=False, flips="relabel")
    assert sorted((s.text, s.label) for s in everything) == [("a", 0), ("b", 1), ("c", 1), ("d", 0)]
    assert [s.label for s in pool] == [0, 0, 1, 2], "the judged samples themselves are not changed"

