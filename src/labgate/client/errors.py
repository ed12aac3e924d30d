"""One exception hierarchy for SDK users: catch LabgateError, or a precise subclass.

Each error carries the server's message, its machine-readable code and the offending field, plus a hint that says
what to do next.
"""

from __future__ import annotations


class LabgateError(Exception):
    """Base of every error the client raises."""

    exit_code = 1
    default_hint: str | None = None

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 field: str | None = None, hint: str | None = None, holder: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.field = field
        self.hint = hint or self.default_hint
        self.holder = holder

    def __str__(self) -> str:
        return self.message


class ConnectionFailed(LabgateError):
    """The server could not be reached."""

    exit_code = 6
    default_hint = "is labgate running at that URL? Check `labgate context ls` or LABGATE_URL"


class Unauthorized(LabgateError):
    exit_code = 5
    default_hint = "log in again with `labgate login --url URL` and a valid token"


class Forbidden(LabgateError):
    exit_code = 5
    default_hint = "this needs an admin token"


class NotFound(LabgateError):
    exit_code = 3
    default_hint = "list what exists with `labgate forward ls`"


class ValidationFailed(LabgateError):
    exit_code = 2
    default_hint = "correct the value the message names and try again (see --help)"


class Conflict(LabgateError):
    exit_code = 4
    default_hint = "see what holds it with `labgate forward ls`"


class PortTaken(Conflict):
    default_hint = "leave out --external-port to get a free one, or remove the forward that holds it"


class RangeExhausted(Conflict):
    default_hint = "remove forwards you no longer use (`labgate forward ls`), or ask the admin for a larger range"


class Unavailable(LabgateError):
    """The server is up but could not apply the change (the kernel refused); nothing was changed."""

    exit_code = 6
    default_hint = "nothing was changed; try again, and tell the admin if it persists"


class RateLimited(LabgateError):
    """The server refused the request for now (429: too many requests with this token, or too many failed logins
    from this address) and the client stopped waiting for it; nothing was changed. `retry_after`: the seconds the
    server last asked to wait (None if it did not say)."""

    exit_code = 6
    default_hint = "nothing was changed; wait a little and try again (an admin can raise [server] rate_limit)"

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


FAILED_LOGINS_HINT = ("too many refused tokens came from this address: check the token (`labgate login --url URL`), "
                      "then try again after the time above")


class ServerError(LabgateError):
    exit_code = 1
    default_hint = "nothing was changed; the server log says more"


class ConfigError(LabgateError):
    """The client's own configuration is missing or wrong."""

    exit_code = 2
    default_hint = "run `labgate login --url URL` first, or set LABGATE_URL and LABGATE_TOKEN"


def error_for(status: int, body: object) -> LabgateError:
    """Turn an error response into the matching exception."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        err = {"message": str(body)[:200] or f"HTTP {status}"}
    code = err.get("code")
    kwargs = dict(status=status, code=code, field=err.get("field"), holder=err.get("holder"))
    message = str(err.get("message") or f"HTTP {status}")
    if status == 401:
        return Unauthorized(message, **kwargs)
    if status == 403:
        return Forbidden(message, **kwargs)
    if status == 404:
        return NotFound(message, **kwargs)
    if status == 409:
        cls = {"port_taken": PortTaken, "range_exhausted": RangeExhausted}.get(code or "", Conflict)
        return cls(message, **kwargs)
    if status in (400, 422):
        return ValidationFailed(message, **kwargs)
    if status == 429:
        hint = FAILED_LOGINS_HINT if code == "too_many_failures" else None
        return RateLimited(message, hint=hint, **kwargs)
    if status == 503:
        return Unavailable(message, **kwargs)
    return ServerError(message, **kwargs)
