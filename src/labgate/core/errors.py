"""One exception hierarchy for the domain; the API maps each to an HTTP status and an error code."""

from __future__ import annotations


class LabgateError(Exception):
    """Base of every error labgate reports to a user."""

    status = 500
    code = "internal"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(LabgateError):
    status = 422
    code = "invalid"


class Unauthorized(LabgateError):
    status = 401
    code = "unauthorized"


class Forbidden(LabgateError):
    status = 403
    code = "forbidden"


class NotFound(LabgateError):
    status = 404
    code = "not_found"


class PortTaken(LabgateError):
    status = 409
    code = "port_taken"

    def __init__(self, message: str, *, field: str | None = "external_port", holder: int | None = None) -> None:
        super().__init__(message, field=field)
        self.holder = holder


class RangeExhausted(LabgateError):
    status = 409
    code = "range_exhausted"


class DataplaneUnavailable(LabgateError):
    status = 503
    code = "dataplane_unavailable"


class DatabaseUnavailable(LabgateError):
    status = 503
    code = "database_unavailable"
