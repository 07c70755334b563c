"""The score_untrained and evaluate stages: prediction on prepared data, seqeval scoring, the metric
catalogue of metrics.json."""
