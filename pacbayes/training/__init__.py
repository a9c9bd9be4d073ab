"""Training: one TrainConfig, the step, the trainer, checkpoints and `finetune`.

Used by the study, not inside it.
"""
