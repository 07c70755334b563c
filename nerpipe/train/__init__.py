"""The train stage: its work (run.py), the training loop and its resumable checkpoints, and its outputs."""
