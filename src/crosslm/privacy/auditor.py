"""Running the membership-inference audit (``crosslm audit RUN_DIR``) on a finished run.

Apart from ``crosslm.privacy.audit`` because it rebuilds the run's federation, and the
module that does so (``crosslm.federation_setup``) plants the canaries with ``audit``: imports point one way.
"""

from __future__ import annotations

import json
from pathlib import Path

from crosslm.config import config_from_layers
from crosslm.errors import CrossLMError, read_yaml
from crosslm.federation_setup import build_federation, load_experiment_data
from crosslm.privacy.audit import AUDIT_RESULT, AUDITED_CLIENT, CANARY_FILE, Canaries, attack
from crosslm.protocol import ScoreIns


def audit_run(run_dir: str | Path) -> dict[str, float]:
    """The loss attack on a finished in-process run with ``audit.canaries``: the server's view only,
    i.e. label distributions that client-0 returns to an ordinary score request."""
    run_dir = Path(run_dir)
    canary_file = run_dir / CANARY_FILE
    if not canary_file.is_file():
        raise CrossLMError(f"{run_dir}: no {CANARY_FILE}; run with audit.canaries > 0 to audit it")
    config = config_from_layers(read_yaml(run_dir / "config.yaml", "run config")[1])
    progress = run_dir / "progress.json"
    if not progress.is_file():
        raise CrossLMError(f"{run_dir}: round 0 has not finished; nothing to audit")
    done = json.loads(progress.read_text(encoding="utf-8"))["completed_round"]
    canaries = Canaries.from_json(canary_file.read_text(encoding="utf-8"))
    federation = build_federation(config, load_experiment_data(config), run_dir, lambda message: None)
    texts = [ex.text for ex in canaries.members + canaries.non_members]
    replies, failures = federation.send({AUDITED_CLIENT: ScoreIns(done + 1, texts)})
    if AUDITED_CLIENT not in replies:
        raise CrossLMError(f"{AUDITED_CLIENT} did not score the canaries: {failures}")
    probs = replies[AUDITED_CLIENT].probs
    count = len(canaries.members)
    result = attack(probs[:count], probs[count:], canaries) | {"after_round": done}
    (run_dir / AUDIT_RESULT).write_text(json.dumps(result), encoding="utf-8")
    return result
