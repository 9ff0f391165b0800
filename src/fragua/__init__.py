"""Fragua: question/answer data in, validated and versioned LLM fine-tunes out."""

__version__ = "0.1.0"
