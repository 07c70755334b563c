"""Shared by every stage: params.yaml (typed, validated), the exceptions stages end with, atomic writes."""
