"""``crosslm bench``: the matrix spec, its runner, each cell's record, estimates and aggregated results."""
