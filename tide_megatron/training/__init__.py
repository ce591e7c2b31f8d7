"""The distillation trainer (DESIGN §1-§2): optimizer and schedule, checkpoints, metrics, FP8, the step.

`DistillTrainer(cfg, train_dataset, valid_dataset).run()` is what ``tide-train`` calls; see trainer.py.
"""
