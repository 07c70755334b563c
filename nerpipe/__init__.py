"""nerpipe: fine-tune a BERT-family encoder for CoNLL-2003 NER as a reproducible DVC pipeline."""

__version__ = "0.1.0"
