"""Key files labgate reads: the key that verifies vLab tokens ([compat] jwt_key_file) and the TSIG key that signs
dynamic DNS updates ([ddns] key_file).

Pure parsing of files, no labgate imports: config validates with these at start, and the workers call them again
before use (a rotated key needs no restart). Every error is a ValueError whose message names the setting and the
file and never contains the file's content.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --- vLab tokens (JWT) ---------------------------------------------------------------------------------------------

JWT_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512")
# RFC 7518 3.2: an HMAC key must be at least as long as the hash output.
HMAC_MIN_KEY_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
RSA_MIN_KEY_BITS = 2048


def load_jwt_key(algorithm: str, path: str) -> Any:
    """The key that verifies vLab tokens: the HMAC secret (bytes) for HS*, an RSA public key for RS*.

    Raises ValueError with a readable reason. There is deliberately no fallback or built-in key."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ValueError(f"compat.jwt_key_file {path!r} cannot be read: {exc.strerror or exc}") from None
    if algorithm.startswith("HS"):
        # The file's bytes as they are, a trailing newline included: vlab-auth-service signs with its key file's
        # text exactly as read, so stripping anything would refuse every real vLab token (docs/compat.md).
        secret = raw
        need = HMAC_MIN_KEY_BYTES[algorithm]
        if len(secret) < need:
            raise ValueError(f"compat.jwt_key_file holds {len(secret)} bytes; {algorithm} needs a secret of at "
                             f"least {need} bytes")
        if b"-----BEGIN" in secret:
            raise ValueError(f"compat.jwt_key_file looks like a PEM key; {algorithm} needs a shared secret "
                             "(use RS256 with a public key)")
        return secret
    # Imported here, not at the top: only an RS* configuration pays for loading the cryptography backend.
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(raw)
    except ValueError:
        raise ValueError(f"compat.jwt_key_file {path!r} is not a PEM public key (BEGIN PUBLIC KEY); "
                         f"{algorithm} verifies with the issuer's public key, never a private key") from None
    if not isinstance(key, RSAPublicKey):
        raise ValueError(f"compat.jwt_key_file {path!r} is not an RSA public key, which {algorithm} needs")
    if key.key_size < RSA_MIN_KEY_BITS:
        raise ValueError(f"compat.jwt_key_file holds a {key.key_size}-bit RSA key; at least {RSA_MIN_KEY_BITS} "
                         "bits are needed")
    return key


# --- dynamic DNS (TSIG, RFC 8945) ----------------------------------------------------------------------------------

# TSIG algorithms accepted for [ddns]; names as BIND's `tsig-keygen -a` and dnspython spell them.
TSIG_ALGORITHMS = ("hmac-sha224", "hmac-sha256", "hmac-sha384", "hmac-sha512")
# A BIND key file as `tsig-keygen` writes it: key "NAME" { algorithm hmac-sha256; secret "..."; };
_KEY_BLOCK_RE = re.compile(r'key\s+"?([A-Za-z0-9._-]+)"?\s*\{(.*?)\}\s*;', re.S)
_KEY_ALGORITHM_RE = re.compile(r"algorithm\s+\"?([A-Za-z0-9-]+)\"?\s*;")
_KEY_SECRET_RE = re.compile(r'secret\s+"([^"]*)"\s*;')


@dataclass(frozen=True)
class TsigKey:
    """A TSIG key read from [ddns] key_file. The secret (base64) stays in memory; repr() never shows it."""

    name: str
    algorithm: str
    secret: str = field(repr=False)


def load_tsig_key(path: str, name: str | None, algorithm: str | None) -> TsigKey:
    """Read the TSIG secret from `path`: either the base64 secret alone, or a BIND key file as `tsig-keygen`
    writes it (`key "NAME" { algorithm hmac-sha256; secret "..."; };`), whose name and algorithm then fill in
    what the config leaves out (and must agree with what it says).

    Raises ValueError with a readable reason that never contains the file's content."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ValueError(f"ddns.key_file {path!r} cannot be read: {reason}") from None
    blocks = _KEY_BLOCK_RE.findall(text)
    if blocks:
        if name is not None:
            blocks = [b for b in blocks if b[0].rstrip(".").lower() == name.rstrip(".").lower()]
            if not blocks:
                raise ValueError(f"ddns.key_file {path!r} holds no key named {name!r}")
        elif len(blocks) > 1:
            raise ValueError(f"ddns.key_file {path!r} holds several keys: say which one with ddns.key_name")
        key_name, body = blocks[0]
        alg = _KEY_ALGORITHM_RE.search(body)
        sec = _KEY_SECRET_RE.search(body)
        if alg is None or sec is None:
            raise ValueError(f"ddns.key_file {path!r}: the key block needs an algorithm and a secret")
        file_algorithm = alg.group(1).lower()
        if algorithm is not None and file_algorithm != algorithm:
            raise ValueError(f"ddns.key_file {path!r} says algorithm {file_algorithm}, the config says {algorithm}")
        name, algorithm, secret = key_name, file_algorithm, sec.group(1).strip()
    else:
        if "{" in text or "}" in text:
            raise ValueError(f"ddns.key_file {path!r} is neither a base64 secret nor a BIND key block")
        secret = "".join(text.split())
        if name is None or algorithm is None:
            raise ValueError(f"ddns.key_file {path!r} holds only a secret: ddns.key_name and ddns.key_algorithm "
                             "are needed too")
    if algorithm not in TSIG_ALGORITHMS:
        raise ValueError(f"TSIG algorithm {algorithm!r} is not supported; use one of {', '.join(TSIG_ALGORITHMS)}")
    try:
        raw = binascii.a2b_base64(secret.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raw = b""
    if not raw:
        raise ValueError(f"ddns.key_file {path!r}: the secret is not valid base64 (make one with "
                         f"`tsig-keygen -a {algorithm} NAME`)")
    return TsigKey(name=name.rstrip(".").lower(), algorithm=algorithm, secret=secret)
