"""Checkpoint readers: single-file SD1.5 checkpoints, LoRA files, motion-adapter state dicts, pickle safety."""
