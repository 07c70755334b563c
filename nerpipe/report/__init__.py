"""The report stage (report.md, figures, error analysis) and `nerpipe pr-report`."""
