"""MLflow tracking: one run per training result, resumed by evaluate and report. By concern: store.py
(where runs go, the write lock), server.py (a server that may be away), held.py (metrics held while it
is), training_run.py (a training's run), trained_model.py (what training logs), results.py (what
evaluate and report log), provenance.py (what produced a run)."""
