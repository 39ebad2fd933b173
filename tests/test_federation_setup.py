"""The one rule for which SLM and seed client k gets, shared by in-process, Flower and export-silos."""

from __future__ import annotations

from crosslm.config import load_config
from crosslm.federation_setup import SiloAssignment, silo_assignment

SLMS = "clients.slm=[sentence-transformers/all-MiniLM-L6-v2,HuggingFaceTB/SmolLM2-135M]"


def test_slms_are_dealt_round_robin_and_each_client_seeds_with_seed_plus_k():
    config = load_config(None, [SLMS, "clients.num_clients=3", "seed=7"])
    assert [silo_assignment(config, k) for k in range(3)] == [
        SiloAssignment("client-0", "sentence-transformers/all-MiniLM-L6-v2", 7),
        SiloAssignment("client-1", "HuggingFaceTB/SmolLM2-135M", 8),
        SiloAssignment("client-2", "sentence-transformers/all-MiniLM-L6-v2", 9),
    ]


def test_centralized_has_one_client_per_distinct_slm():
    config = load_config(None, [SLMS, "clients.num_clients=4", "method=centralized"])
    assert [silo_assignment(config, k) for k in range(2)] == [
        SiloAssignment("centralized-0", "sentence-transformers/all-MiniLM-L6-v2", 0),
        SiloAssignment("centralized-1", "HuggingFaceTB/SmolLM2-135M", 1),
    ]
