"""Spreading per-tensor work over worker processes and torchrun ranks."""
