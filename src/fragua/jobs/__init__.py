"""The operations the Prefect tasks wrap, one module per stage (as ``fragua.tasks`` is laid out).

Each function does one job end to end: it opens what it needs (dataset store, registry, run
folder) once, calls the stage packages, and writes its outputs, so that a task is a thin
retrying wrapper and a CLI command or a test can call the same thing.
"""
