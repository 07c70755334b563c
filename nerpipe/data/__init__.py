"""The download and prepare stages: fetching and reading CoNLL files, tag schemes, sub-token alignment and
windows, and the prepared layout (with its batching) that every later stage reads."""
