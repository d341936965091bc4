"""Training under a strategy: the differentiable single-process emulation of the
P-partition forward (emulate.py) and fine-tuning through it (finetune.py)."""
