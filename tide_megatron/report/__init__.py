"""Results over many runs: the run-directory contract, statistics over seeds, and the ablation report."""
