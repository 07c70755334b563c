"""The model: loading tokenizers and token-classification models safely, the device and precision,
which parameters train."""
