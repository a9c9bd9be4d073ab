"""Fine-tuning: objectives, optimiser, trainer, and the `finetune` entry point (used by the study, not inside it)."""

