"""The `labgate` command (Typer; the entry point is `labgate.cli.main:app`).

- main.py: the app and the server-side commands: serve, config, token, db, demo; it registers the client commands.
- commands.py: client commands (login, context, forward, machine, gateway, ddns status), through the SDK only.
- connect.py: `labgate connect`, which finds or creates a machine's forward and opens the right client program.
- context.py: the client's own config file (named contexts: url, token, gateway, host).
- output.py: tables, JSON and one-line errors with a hint.
- demo.py: `labgate demo`, a throwaway namespace lab served by labgate."""
