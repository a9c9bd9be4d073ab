"""LoRA adapters: PEFT-compatible read/write, merge, and the LoRA parameter space."""

