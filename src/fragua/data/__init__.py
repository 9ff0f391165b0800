"""Data in: sources and their formats, quality checks, routing, splits, ingest, expansion and dataset versions."""
