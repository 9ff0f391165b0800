"""`python -m fragua.cli`: the `fragua` command."""

from fragua.cli import entrypoint

if __name__ == "__main__":  # importing the module (e.g. walking the package) must not run the command
    entrypoint()
