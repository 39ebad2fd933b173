"""The round of docs/design.md, written once against the federation interface: ``RoundLoop``.

Round 0 is local training and the LLM before enhancement; rounds 1..R are
S1, C2, S2, S3, S4, S5, C1 (+E). Baselines reuse it with a side left out
(see ``crosslm.experiment.run_experiment`` and ``crosslm.baselines``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from crosslm.config import ExperimentConfig
from crosslm.errors import CrossLMError
from crosslm.evaluate import GeneralData, general_ability, load_general_data, task_accuracy
from crosslm.evaluation_cache import EvaluationCache, digest
from crosslm.methods import method_spec
from crosslm.models.loading import model_cache_dir
from crosslm.protocol import FitIns, FitRes, ScoreIns
from crosslm.quality.meter import DataQualityMeter
from crosslm.reporting.summary import summarise
from crosslm.rundir import RunDir
from crosslm.runtime.base import Federation
from crosslm.server import Server
from crosslm.strategies.realism import wants_votes
from crosslm.tasks.data import DataUnavailable
from crosslm.tasks.spec import Example

Progress = Callable[[str], None]


class RoundLoop:
    """Runs rounds 0..R, logging one metrics line per phase and per round."""

    def __init__(self, config: ExperimentConfig, server: Server | None, federation: Federation | None,
                 run: RunDir, llm_test: list[Example], data_dir: Path | None,
                 progress: Progress = lambda message: None) -> None:
        self.config, self.server, self.federation, self.run = config, server, federation, run
        self.llm_test, self.data_dir, self.progress = llm_test, data_dir, progress
        self.evaluations = EvaluationCache(model_cache_dir() / "evaluations", config.evaluation.cache)
        self.round = 0
        self._general: GeneralData | None = None
        self._general_tried = False
        self.quality = (DataQualityMeter(config, server.task, data_dir, progress)
                        if config.evaluation.data_quality and server is not None else None)

    @contextmanager
    def phase(self, name: str, **fields):
        """Time a phase and log it with whatever metrics the body adds to the yielded dict."""
        self.progress(f"round {self.round}: {name}")
        record: dict = {}
        start = time.perf_counter()
        yield record
        seconds = time.perf_counter() - start
        self.run.log({"round": self.round, "phase": name, "seconds": round(seconds, 3),
                      **fields, **record})

    def _send(self, messages: dict, name: str) -> dict:
        replies, failures = self.federation.send(messages)
        for cid, error in failures.items():
            self.run.log({"round": self.round, "phase": "failure", "client": cid,
                          "message": name, "error": error})
            self.progress(f"round {self.round}: {cid} failed in {name}: {error.splitlines()[0]}")
        if not replies:
            raise CrossLMError(f"round {self.round}: no client replied to {name}")
        if len(replies) < self.config.clients.min_replies:
            raise CrossLMError(f"round {self.round}: only {len(replies)} of {len(messages)} clients "
                               f"replied to {name}; clients.min_replies is {self.config.clients.min_replies}")
        return replies

    def _fit_clients(self, accepted: list) -> None:
        """C1 (and E) on every client, with the accepted set of this round."""
        ins = FitIns(self.round, [s.text for s in accepted], [s.label for s in accepted],
                     [s.soft_label for s in accepted])
        with self.phase("C1-fit") as record:
            replies: dict[str, FitRes] = self._send(
                {cid: ins for cid in self.federation.client_ids()}, "fit")
            record["clients"] = {cid: asdict(r) for cid, r in replies.items()}
            record["eval_seconds"] = sum(r.metrics.get("eval_seconds", 0) for r in replies.values())

    def _evaluate_llm(self) -> None:
        """Task accuracy before, after and (optionally) between; general ability before and after.

        Results come from the evaluation cache when the same model was evaluated on the
        same data with the same settings before (the LLM before round 1, in every run).
        """
        ev = self.config.evaluation
        first_or_last = self.round in (0, self.last_round)
        if not (first_or_last or ev.llm_task_every_round):
            return
        model = self.server.llm.classifier_fingerprint()
        with self.phase("E-llm-task") as record:
            key = {"evaluation": "task-accuracy", "model": model, "calibrate": ev.calibrate,
                   "test": digest([[ex.text, ex.label] for ex in self.llm_test])}
            result, record["cached"] = self.evaluations.get_or_compute(
                key, lambda: task_accuracy(self.server.llm.classifier, self.llm_test, ev.calibrate))
            record |= result
        if first_or_last and ev.general_ability and self._general_data() is not None:
            with self.phase("E-llm-general") as record:
                data = self._general
                key = {"evaluation": "general-ability", "model": model, "wikitext": digest(data.wikitext),
                       "wikitext_tokens": ev.wikitext_tokens,
                       "arc_easy": digest([asdict(item) for item in data.arc_easy[:ev.arc_easy_questions]])}
                result, record["cached"] = self.evaluations.get_or_compute(
                    key, lambda: general_ability(self.server.llm.language_model(), self.server.llm.tokenizer,
                                                 data, ev.wikitext_tokens, ev.arc_easy_questions))
                record |= result

    def _general_data(self) -> GeneralData | None:
        """WikiText-2 and ARC-Easy (data directory or hub), loaded once; when neither has them the
        run goes on without general ability and says so on the console and in metrics.jsonl."""
        if not self._general_tried:
            self._general_tried = True
            try:
                self._general = load_general_data(self.data_dir)
            except DataUnavailable as err:
                self.progress(f"general ability not measured: {err}")
                self.run.log({"round": self.round, "phase": "note",
                              "message": f"general ability not measured: {err}"})
        return self._general

    def _log_traffic(self) -> None:
        mine = [t for t in self.federation.transfers if t.round == self.round]
        per_client: dict[str, dict[str, int]] = {}
        for t in mine:
            per_client.setdefault(t.client, {"down": 0, "up": 0})[t.direction] += t.bytes
        self.run.log({"round": self.round, "phase": "communication", "bytes": per_client})

    def round_zero(self) -> None:
        """Local training only (the fair baseline), and the LLM before any enhancement.

        Baselines leave out a side: no server for local-only and centralized, no
        clients for the LLM-only ones.
        """
        self.round = 0
        if self.federation is not None:
            self._fit_clients([])
            self._log_traffic()
        if self.server is not None:
            self._evaluate_llm()
            self.server.save(self.run.round_dir(0))
        self.run.mark_completed(0)

    def crosslm_round(self, round_: int) -> None:
        self.round = round_
        with self.phase("S1-generate") as record:
            candidates, dropped = self.server.generate(round_)
            record |= {"generated": len(candidates) + sum(dropped.values()),
                       "kept": len(candidates), "dropped": dropped}
        if not candidates:
            raise CrossLMError(f"round {round_}: every generated sample was degenerate")
        method = method_spec(self.config.method)
        if not method.judged:  # synthetic-no-feedback, oracle-filtered
            scored = accepted = self.server.accept_unjudged(candidates)
            if method.oracle_filtered:
                accepted = self.quality.labelled_as_intended(accepted)
        else:
            scored, accepted = self._judge(candidates)
        # by text (S1 drops duplicates): S4 may accept a sample under another label (selection.flips)
        accepted_label = {s.text: s.label for s in accepted}
        self.run.write_jsonl(self.run.round_dir(round_) / "samples.jsonl",
                             [{**s.__dict__, "accepted": s.text in accepted_label,
                               "accepted_label": accepted_label.get(s.text)} for s in scored])
        if self.quality is not None:
            with self.phase("E-data-quality") as record:
                record |= self.quality.measure(candidates, scored, accepted)
        with self.phase("S5-enhance-llm") as record:
            record |= self.server.enhance(accepted, round_)
        self._fit_clients(accepted)
        self._evaluate_llm()
        self._log_traffic()
        self.server.save(self.run.round_dir(round_))
        self.run.mark_completed(round_)

    def _judge(self, candidates: list) -> tuple[list, list]:
        """C2 to S4: the SLMs score, the generator learns from it, the best are accepted."""
        with self.phase("C2-score") as record:
            ask = ScoreIns(self.round, [c.text for c in candidates],
                           votes=wants_votes(self.config.feedback.strategy))
            replies = self._send({cid: ask for cid in self.federation.client_ids()}, "score")
            record["client_seconds"] = {cid: r.seconds for cid, r in replies.items()}
        with self.phase("S2-aggregate") as record:
            scored = self.server.aggregate(candidates, replies)
            record["mean_quality"] = sum(s.quality for s in scored) / len(scored)
        with self.phase("S3-improve-generator") as record:
            record |= self.server.improve_generator(scored, self.round)
        with self.phase("S4-select") as record:
            accepted = self.server.select(scored)
            record |= {"accepted": len(accepted), "candidates": len(scored)}
        return scored, accepted

    @property
    def last_round(self) -> int:
        """Rounds after 0 need both sides; a baseline without one ends after round 0."""
        return self.config.rounds if self.server is not None and self.federation is not None else 0

    def restore(self, done: int) -> None:
        """Load the server's state after round ``done`` (clients keep theirs on their own disk)."""
        if self.server is not None:
            self.server.load(self.run.round_dir(done))

    def run_all(self) -> dict:
        done = self.run.completed_round()
        if done is None:
            self.round_zero()
            done = 0
        else:
            self.restore(done)
            self.progress(f"resuming after round {done}")
        for round_ in range(done + 1, self.last_round + 1):
            self.crosslm_round(round_)
        summary = {"method": self.config.method, **summarise(self.run.metrics())}
        self.run.write_json("summary.json", summary)
        return summary
