"""A meter of the synthetic data that does not ask the judges (issue #29).

The judges (the clients' SLMs) score the samples they then train on, so their own
scores cannot tell whether the data got better. With ``evaluation.data_quality`` the
server measures each round's generated set (S1) and accepted set (S4) against
instruments no client and no generator ever sees:

- ``oracle``: an SLM trained on the task's real training split, cached on disk; its
  argmax is the reference label (``measures.agreement``: label fidelity; judge accuracy);
- ``measures``: pure functions (label fidelity, distinct-n, Fréchet distance, judge accuracy);
- ``meter``: the per-round record (phase ``E-data-quality`` in ``metrics.jsonl``);
- ``summary``: the run summary's keys and the rows ``crosslm show`` prints.
"""
