"""Speed benchmarks: nerpipe's training loop side by side with the Hugging Face Trainer (see README.md)."""
