"""Every setting of mm7soap, read in one place: defaults, then `MM7SOAP_*`, then CLI flags."""

from __future__ import annotations

import ipaddress
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
    # Threads per worker: a slow or stalled client holds one thread, not a whole worker, and
    # while one thread commits a group of reports the others read the next ones (issue 7).
    threads: int = 16
    # Seconds gunicorn lets a request run before the worker is replaced.
    timeout: int = 30
    log_level: str = "info"
    # Largest request body accepted; a larger one gets 413 without being read.
    max_body_bytes: int = 20 * 1024 * 1024
    # Seconds a client may pause while sending its request (head or body), or before sending
    # anything on a new connection; then it is closed, with 408 if it had begun a request.
    read_timeout: float = 10.0
    # HTTP Basic credentials an MMSC must send; no user means no authentication.
    auth_user: str = ""
    auth_password: str = ""
    # Networks (CIDRs) allowed to post; empty means any address.
    allow_ips: tuple[str, ...] = ()
    # Proxies (CIDRs) whose X-Forwarded-For is believed, e.g. the TLS-terminating one.
    trusted_proxies: tuple[str, ...] = ()
    # The VASP's ServiceCode put in every DeliverRsp (for charging); empty leaves it out.
    service_code: str = ""

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
                values[f.name] = parse_value(f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None and v != ()})
        return replace(cls(), **values).checked()

    def checked(self) -> Settings:
        if self.synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {self.synchronous!r}")
        if self.fault_http_status not in (200, 500):
            raise ValueError("fault_http_status must be 200 or 500")
        if not self.path.startswith("/"):
            raise ValueError("path must start with /")
        for network in (*self.allow_ips, *self.trusted_proxies):
            ipaddress.ip_network(network, strict=False)  # ValueError names the bad one
        if self.auth_password and not self.auth_user:
            raise ValueError("auth_password is set but auth_user is not")
        return self

    @property
    def bind(self) -> str:
        return f"{self.host}:{self.port}"


def parse_value(type_name: str, raw: str) -> Any:
    """An environment variable's text as the setting's type (lists are comma-separated)."""
    if type_name == "int":
        return int(raw)
    if type_name == "float":
        return float(raw)
    if type_name.startswith("tuple"):
        return tuple(item.strip() for item in raw.split(",") if item.strip())
    return raw
