"""The `labgate` command: server-side commands (serve, token, db, demo) and, later, the API client commands."""
