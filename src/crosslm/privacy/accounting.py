"""How much privacy a DP client spends: planning its noise before the run, composing its ε over rounds.

Every DP step of a client is one Sampled Gaussian Mechanism application on its
private records (Poisson sampling with rate q = batch_size / n_private, noise
multiplier σ). Opacus's accountants (RDP by default, or PRV) compose them; this
module only decides which steps a run will take and keeps their history on the
client's disk, so a restarted client keeps counting where it stopped.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from crosslm.config import (
    DP_LOCAL_TRAINING,
    DP_LORA_LR,
    DP_PUBLIC_TRAINING,
    DP_ROUND_TRAINING,
    ExperimentConfig,
    PrivacyConfig,
    TrainConfig,
)
from crosslm.errors import CrossLMError
from crosslm.rundir import write_atomic

# noise multipliers the planner searches between; above the top, training learns nothing
SIGMA_RANGE = (0.05, 500.0)


@dataclass(frozen=True)
class Phase:
    """Steps that share one sampling rate and noise multiplier."""

    sample_rate: float
    steps: int


@dataclass(frozen=True)
class DPPlan:
    """What a client needs to train with DP-SGD and account for it."""

    noise_multiplier: float
    max_grad_norm: float
    delta: float
    accountant: str
    planned_epsilon: float
    local_training: TrainConfig = field(default_factory=lambda: DP_LOCAL_TRAINING)  # round 0
    round_training: TrainConfig = field(default_factory=lambda: DP_ROUND_TRAINING)  # every later C1
    public_training: TrainConfig | None = field(default_factory=lambda: DP_PUBLIC_TRAINING)  # then, public
    lora_lr: float = DP_LORA_LR  # every budget's rate for a causal SLM's LoRA


def sample_rate(batch_size: int, n_private: int) -> float:
    """Poisson sampling rate of the private records: the expected private batch is ``batch_size``."""
    return min(1.0, batch_size / n_private)


def steps_per_epoch(batch_size: int, n_private: int) -> int:
    """One epoch is one expected pass over the private records (Opacus: 1 / q steps)."""
    return math.ceil(n_private / batch_size)


def training_phase(budget: TrainConfig, n_private: int) -> Phase:
    return Phase(sample_rate(budget.batch_size, n_private),
                 budget.epochs * steps_per_epoch(budget.batch_size, n_private))


def planned_phases(config: ExperimentConfig, n_private: int) -> list[Phase]:
    """Round 0 (all ``privacy.local_training`` epochs: no early stopping under DP) and every later C1."""
    c = config.privacy
    round_zero = training_phase(c.local_training, n_private)
    later = training_phase(c.round_training, n_private)
    return [round_zero] + ([Phase(later.sample_rate, later.steps * config.rounds)] if config.rounds else [])


def epsilon(phases: list[Phase], noise_multiplier: float, delta: float, accountant: str = "rdp") -> float:
    """ε after ``phases`` at ``noise_multiplier``, composed by an Opacus accountant."""
    steps = [p for p in phases if p.steps > 0]
    if not steps:
        return 0.0
    return composed_epsilon([(noise_multiplier, p.sample_rate, p.steps) for p in steps], delta, accountant)


def composed_epsilon(history: list[tuple[float, float, int]], delta: float, accountant: str = "rdp") -> float:
    """ε of (noise multiplier, sampling rate, steps) entries composed by an Opacus accountant."""
    from opacus.accountants import create_accountant  # here: a non-private client never loads Opacus

    acc = create_accountant(mechanism=accountant)
    acc.history = list(history)
    with warnings.catch_warnings():  # at tiny noise the best RDP order is the largest: ε is an upper bound
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(acc.get_epsilon(delta=delta))


def plan_noise(phases: list[Phase], target_epsilon: float, delta: float, accountant: str = "rdp",
               tolerance: float = 0.01) -> float:
    """The smallest noise multiplier (within ``tolerance`` of ε) that spends at most the target.

    Opacus's ``get_noise_multiplier`` does the same bisection for one sampling rate;
    round 0 and later rounds may differ in batch size, so this composes both.
    """
    low, high = SIGMA_RANGE
    if epsilon(phases, high, delta, accountant) > target_epsilon:
        raise CrossLMError(f"privacy.target_epsilon {target_epsilon} cannot be met even with noise "
                           f"multiplier {high}: train fewer steps or raise the target")
    if epsilon(phases, low, delta, accountant) <= target_epsilon:
        return low
    while True:
        mid = (low + high) / 2
        spent = epsilon(phases, mid, delta, accountant)
        if spent > target_epsilon:
            low = mid
        else:
            high = mid
            if target_epsilon - spent < tolerance:
                return high


def plan(config: ExperimentConfig, n_private: int, client: str = "a client") -> DPPlan:
    """The noise a client with ``n_private`` records trains with; a budget the run would exceed is
    an error before anything is trained."""
    p: PrivacyConfig = config.privacy
    phases = planned_phases(config, n_private)
    if p.noise_multiplier is None:
        sigma = plan_noise(phases, p.target_epsilon, p.delta, p.accountant)
    else:
        sigma = p.noise_multiplier
    planned = epsilon(phases, sigma, p.delta, p.accountant)
    if p.target_epsilon is not None and planned > p.target_epsilon:
        raise CrossLMError(
            f"privacy: {client} ({n_private} private records) would spend ε = {planned:.2f} over round 0 "
            f"and {config.rounds} rounds at noise multiplier {sigma}, above privacy.target_epsilon "
            f"{p.target_epsilon}: raise the noise, lower rounds or epochs, or leave noise_multiplier "
            "unset so it is planned")
    return DPPlan(sigma, p.max_grad_norm, p.delta, p.accountant, planned, p.local_training, p.round_training,
                  p.public_training, p.lora_lr)


class PrivacyLedger:
    """The DP steps a client took, by round, on its disk: re-fitting a round replaces its entry, so a
    client restarted mid-round does not count that round twice. Each round keeps its own noise
    multiplier, so ε stays exact if a resumed run (with more rounds) planned a different one."""

    def __init__(self, path: Path, plan_: DPPlan) -> None:
        self.path, self.plan = Path(path), plan_

    def _rounds(self) -> dict[str, list[list[float]]]:
        return json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}

    def record(self, round_: int, phases: list[Phase]) -> float:
        """Store round ``round_``'s steps (forgetting later rounds, which a resume re-runs); ε so far."""
        rounds = {r: v for r, v in self._rounds().items() if int(r) < round_}
        rounds[str(round_)] = [[self.plan.noise_multiplier, p.sample_rate, p.steps] for p in phases]
        write_atomic(self.path, json.dumps(rounds))
        return self.epsilon()

    def epsilon(self) -> float:
        """ε over every round recorded so far, composed by the plan's accountant."""
        history = [(sigma, q, int(steps))
                   for entries in self._rounds().values() for sigma, q, steps in entries]
        return composed_epsilon(history, self.plan.delta, self.plan.accountant) if history else 0.0
