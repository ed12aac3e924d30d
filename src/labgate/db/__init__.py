"""Persistence: the tables (models), engine and sessions (session), schema migrations (migrate)."""
