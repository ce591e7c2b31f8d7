"""The paper's benchmarks through lm-evaluation-harness (spec §7.2, §8; docs/EVALUATION.md).

- ``model``: ``tide_bd3lm``, the harness model class (block sampler, likelihood bound, data parallel);
- ``tasks/``: task YAMLs of ours (``hellaswag_gen``, ``mmlu_generative_dream``, and the code tasks
  scored in our sandbox), added to the harness's task index;
- ``offline``: local dataset directories (``--data-dir``) through ``dataset_path: json``;
- ``suite``: the eight-benchmark paper suite and its table; ``cli``: ``tide-lm-eval``.

Needs the ``eval`` extra (``pip install -e .[eval]``); nothing here is imported by the rest of the package.
"""
