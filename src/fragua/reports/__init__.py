"""Human-readable reports (Prefect artifacts, model cards, the CLI): datasets, expansion, training, validation."""
