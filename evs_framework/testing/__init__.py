"""Test support: tiny random-weight checkpoints written in the real on-disk formats (never used by runs)."""
