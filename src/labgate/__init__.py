"""labgate: a self-service port-forwarding gateway (REST API + CLI over nftables)."""

__version__ = "0.1.0"
