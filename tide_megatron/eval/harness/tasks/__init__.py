"""Task YAMLs of tide-megatron for lm-evaluation-harness (a package so the harness's ``lm_eval.tasks``
entry point can name it); see docs/EVALUATION.md for what each task scores."""
