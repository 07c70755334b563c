"""MLflow tracking: one run per training result, resumed by evaluate and report."""
