"""Inference: choosing a model, batched generation and the chat REPL."""
