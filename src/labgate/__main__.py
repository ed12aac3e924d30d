"""`python -m labgate` is the `labgate` command."""

from labgate.cli.main import app

app()
