"""The train stage: the training loop and its resumable checkpoints."""
