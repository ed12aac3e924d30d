"""The rules of the domain: validation, port allocation, ownership, forwards, machines, tokens."""
