"""`python -m fragua.cli`: the `fragua` command."""

from fragua.cli import app

if __name__ == "__main__":  # importing the module (e.g. walking the package) must not run the command
    app(prog_name="fragua")
