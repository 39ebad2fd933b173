"""Benchmark: an LM head on the strided slice ``logits_to_keep`` makes, against a contiguous copy.

Gemma 3's head shape (262,144 × 640) on the last 1 and 9 positions of 32 rows of 45 tokens,
the shapes of S5 and the task evaluation; two tries each, in seconds. Why crosslm registers
a forward pre-hook that makes the head's input contiguous (crosslm.models.loading). Run:

    .venv/bin/python benchmarks/lm_head_slice.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F


def seconds(inputs: torch.Tensor, weight: torch.Tensor) -> float:
    F.linear(inputs, weight)  # warm-up
    start = time.perf_counter()
    F.linear(inputs, weight)
    return time.perf_counter() - start


def main() -> None:
    weight = torch.randn(262_144, 640)
    hidden = torch.randn(32, 45, 640)
    for positions in (1, 9):
        strided = hidden[:, -positions:, :]
        for _ in range(2):
            print(f"last {positions} position(s): strided {seconds(strided, weight):.2f} s, "
                  f"contiguous {seconds(strided.contiguous(), weight):.2f} s")


if __name__ == "__main__":
    main()
