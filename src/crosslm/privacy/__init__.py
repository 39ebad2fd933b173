"""Differential privacy at the clients: DP-SGD training, its accounting, and an audit (docs/privacy.md)."""
