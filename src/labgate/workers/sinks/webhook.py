"""Events to an HTTP endpoint: batches POSTed as JSON."""

from __future__ import annotations

import ssl
import time
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

import httpx

from labgate import __version__
from labgate.events import Event
from labgate.workers.sinks.base import DeliveryError, DeliveryPolicy, Sink

# The most of a collector's answer that is read (and thrown away): only its status matters. A longer answer is
# not read to its end; its connection is closed instead.
MAX_ANSWER_BYTES = 64 * 1024


class WebhookSink(Sink):
    """POST {"events": [event, ...]} (JSON, Event.to_dict() each) to a URL; a 2xx answer means delivered.

    The bearer token is read from token_file at every request (a rotated token needs no restart). Errors name
    only the URL's scheme, host and port: webhook paths often carry secrets. The answer's body is streamed and
    discarded, at most MAX_ANSWER_BYTES of it within `timeout`: a collector cannot make labgate hold a huge
    answer in memory, or keep it reading one forever."""

    type = "webhook"

    def __init__(self, name: str, url: str, *, token_file: str | None = None, ca_file: str | None = None,
                 timeout: float = 10.0, policy: DeliveryPolicy | None = None) -> None:
        super().__init__(name, policy)
        self.url, self.token_file = url, token_file
        parts = urlsplit(url)
        self._where = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"
        self._verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self.timeout = timeout
        self._client: httpx.Client | None = None
        self._ok = False

    @property
    def connected(self) -> bool:
        return self._ok

    def _token(self) -> str:
        assert self.token_file is not None
        try:
            token = Path(self.token_file).read_text().strip()
        except OSError as exc:
            raise DeliveryError(f"token_file cannot be read: {exc.strerror or exc}") from None
        if not token:
            raise DeliveryError("token_file is empty")
        return token

    def send(self, events: Sequence[Event]) -> None:
        self._ok = False
        headers = {"Content-Type": "application/json"}
        if self.token_file:
            headers["Authorization"] = f"Bearer {self._token()}"
        body = ('{"events":[' + ",".join(event.to_json() for event in events) + "]}").encode("utf-8")
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout, verify=self._verify, follow_redirects=False,
                                        headers={"User-Agent": f"labgate/{__version__}"})
        try:
            with self._client.stream("POST", self.url, content=body, headers=headers) as response:
                status = response.status_code
                self._drain(response)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"POST {self._where}: {type(exc).__name__}: {exc}") from None
        if not 200 <= status < 300:
            raise DeliveryError(f"POST {self._where}: HTTP {status}")
        self._ok = True

    def _drain(self, response: httpx.Response) -> None:
        """Read and discard the answer's body, up to MAX_ANSWER_BYTES and `timeout` seconds; when there is more,
        leave it unread: closing a response that was not read to its end closes its connection (httpx), so the
        next batch opens a new one. A short answer read to its end keeps the connection for the next batch."""
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
            return  # not worth reading any of it
        deadline = time.monotonic() + self.timeout
        size = 0
        for chunk in response.iter_raw(16 * 1024):
            size += len(chunk)
            if size > MAX_ANSWER_BYTES or time.monotonic() > deadline:
                return

    def close(self) -> None:
        client, self._client = self._client, None
        self._ok = False
        if client is not None:
            client.close()
