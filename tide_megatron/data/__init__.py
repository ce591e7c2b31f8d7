"""Preprocessing into megatron-core indexed datasets, the dataset reader and the train-time alignment stage."""
