"""Every method crosslm runs, declared once: CrossLM and the baselines it is compared with.

A method is a set of facts the rest of the code reads from here: which sides it builds (the
server LLM, the clients), what its rounds 1..R do, which settings it never reads, where it can
run, and how the bench counts and compares it. Adding a baseline means adding an entry here and
the code that is new about it (docs/experiments.md describes each method).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Named groups of settings, expanded by ``crosslm.config.settings_not_read`` (which knows the fields).
ENHANCEMENT = "@enhancement"  # S1's sampling settings, feedback (S3), selection (S4), aggregation (S2)
LLM_TRAINING = "@llm-training"  # S5's settings and S3's optimizer

Rounds = Literal["generate", "average", "llm-on-silos", "none"]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    summary: str
    server: bool  # builds the server LLM (and evaluates it)
    clients: bool  # builds one client SLM per silo (or per SLM, when pooled)
    # what rounds 1..R do: generate (S1, C2, S2-S4 when judged, S5, C1), average (FedAvg of SLM
    # weights), llm-on-silos (S5 on the union of the silos' real data) or none (round 0 only:
    # local training and the LLM before enhancement)
    rounds: Rounds
    judged: bool = False  # generate: the SLMs score the samples (C2, S2, S3, S4); else all are accepted
    # generate, unjudged: S4 keeps only the samples the data-quality meter's oracle labels as intended
    oracle_filtered: bool = False
    pooled: bool = False  # one client per distinct SLM, trained on the union of the silos
    few_shot_prompt: bool = False  # the LLM classifies with labelled public demonstrations in its prompt
    one_slm: bool = False  # every client must have the same SLM (weights are averaged)
    engines: tuple[str, ...] = ("in-process",)  # the engines it runs on
    private: bool = True  # can train under DP (privacy section); False: it would leak outside the guarantee
    not_read: tuple[str, ...] = ()  # dotted settings (or groups above) it never reads
    checked: bool = False  # the bench checks its results against the targets (the method under test)

    @property
    def reads_silos(self) -> bool:
        """It partitions the private data: the clients' silos, or their union for the LLM."""
        return self.clients or self.rounds == "llm-on-silos"

    @property
    def llm_only(self) -> bool:
        """The LLM is evaluated once, untrained (zero-shot, few-shot)."""
        return self.server and not self.clients and self.rounds == "none"


METHODS: tuple[MethodSpec, ...] = (
    MethodSpec("crosslm", "the LLM writes, the SLMs judge, both learn from the accepted samples",
               server=True, clients=True, rounds="generate", judged=True,
               engines=("in-process", "flower-sim", "flower"), checked=True),
    MethodSpec("local-only", "each SLM trained on its own silo only", server=False, clients=True,
               rounds="none", not_read=("server", "generation.prompt_format", ENHANCEMENT)),
    MethodSpec("fedavg", "one SLM, its weights averaged over the silos every round", server=False,
               clients=True, rounds="average", one_slm=True, private=False,
               not_read=("server", "generation.prompt_format", ENHANCEMENT)),
    MethodSpec("centralized", "each SLM trained on the union of the silos (an upper bound)", server=False,
               clients=True, rounds="none", pooled=True, private=False,
               not_read=("server", "generation.prompt_format", ENHANCEMENT)),
    MethodSpec("llm-zero-shot", "the LLM classifies with its task prompt only", server=True, clients=False,
               rounds="none", not_read=("clients", "privacy", "audit", ENHANCEMENT, LLM_TRAINING)),
    MethodSpec("llm-few-shot", "the LLM classifies with labelled public demonstrations", server=True,
               clients=False, rounds="none", few_shot_prompt=True,
               not_read=("clients", "privacy", "audit", ENHANCEMENT, LLM_TRAINING)),
    MethodSpec("centralized-llm", "the LLM's classifier adapter trained (S5) on the union of the silos' "
               "real data: the LLM's upper reference", server=True, clients=False, rounds="llm-on-silos",
               private=False, not_read=("clients.slm", "privacy", "audit", ENHANCEMENT)),
    MethodSpec("synthetic-no-feedback", "CrossLM's rounds with every generated sample accepted unjudged",
               server=True, clients=True, rounds="generate",
               not_read=("feedback", "selection", "aggregation")),
    MethodSpec("oracle-filtered", "synthetic-no-feedback keeping only the samples the data-quality "
               "meter's oracle labels as intended: the upper reference for label feedback", server=True,
               clients=True, rounds="generate", oracle_filtered=True, private=False,
               not_read=("feedback", "selection", "aggregation")),
)

BY_NAME = {m.name: m for m in METHODS}
METHOD_NAMES = tuple(BY_NAME)


def method_spec(name: str) -> MethodSpec:
    return BY_NAME[name]
