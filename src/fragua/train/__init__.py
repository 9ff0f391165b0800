"""Fine-tuning: the trainer lifecycle, batching, distributed launches, checkpoints, hyperparameter search, incremental runs."""
