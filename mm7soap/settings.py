"""Every setting of mm7soap, read in one place: defaults, then `MM7SOAP_*`, then CLI flags."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

ENV_PREFIX = "MM7SOAP_"


@dataclass(frozen=True)
class Settings:
    """What the service needs; passed explicitly to everything that needs part of it."""

    # SQLite file holding what arrived (the embedded default: a file beside you).
    database: str = "mm7soap.db"
    host: str = "127.0.0.1"
    port: int = 8080
    # The endpoint path the MMSC posts to; `/` is always accepted too.
    path: str = "/mm7"
    # How long a write waits for another writer before the request gets a 3000 fault.
    busy_timeout_ms: int = 5000
    # SQLite `synchronous`: FULL makes every acknowledged report survive a power cut.
    synchronous: str = "FULL"
    # HTTP status of a SOAP Fault: 500 per SOAP 1.1; some MMSCs want 200.
    fault_http_status: int = 500
    workers: int = 2
    # Seconds gunicorn lets a request run before the worker is replaced.
    timeout: int = 30
    # Where the service's log goes ('-' is stderr).
    log_level: str = "info"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, overridden by `MM7SOAP_<NAME>` variables, overridden by `overrides`.

        An override of None means "not given" (a CLI flag left out), so it changes nothing.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = int(raw) if f.type == "int" else raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values).checked()

    def checked(self) -> Settings:
        if self.synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {self.synchronous!r}")
        if self.fault_http_status not in (200, 500):
            raise ValueError("fault_http_status must be 200 or 500")
        if not self.path.startswith("/"):
            raise ValueError("path must start with /")
        return self

    @property
    def bind(self) -> str:
        return f"{self.host}:{self.port}"
