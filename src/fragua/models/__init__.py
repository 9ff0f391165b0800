"""Models: loading (hub id, folder, GGUF), the tiny local base model, chat templates and loss masking."""
