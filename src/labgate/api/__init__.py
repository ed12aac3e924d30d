"""The REST API (FastAPI): one module per resource under routes/, auth and sessions in deps."""
