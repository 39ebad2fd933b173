"""What a run shows: its summary table, HTML report, plots and TensorBoard scalars."""
