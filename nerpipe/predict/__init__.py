"""`nerpipe predict`: raw text to words, windows and entities; model sources (directory or MLflow URI);
output formats."""
