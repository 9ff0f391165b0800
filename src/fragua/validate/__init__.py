"""Validation: metrics, scoring, promotion gates, plots and batch evaluation."""
