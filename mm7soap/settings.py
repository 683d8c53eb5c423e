"""Every setting of mm7soap, read in one place: defaults, then `MM7SOAP_*`, then CLI flags."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import urlsplit

ENV_PREFIX = "MM7SOAP_"


@dataclass(frozen=True, repr=False)
class Settings:
    """What the service needs; passed explicitly to everything that needs part of it."""

    # Where what arrived is stored: a SQLite file (the embedded default: a file beside you), or
    # a PostgreSQL database that several instances share, postgresql://user:password@host:5432/name.
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
    # Hand-off (mm7soap.forwarder): every stored report, read reply and MO is POSTed here as
    # a signed JSON event; empty means no forwarding (the events wait in the outbox).
    webhook_url: str = ""
    # The Standard Webhooks secret, `whsec_` and base64 (required with a URL).
    webhook_secret: str = ""
    # Seconds one delivery may take before it counts as failed and is retried.
    webhook_timeout: float = 10.0
    # Deliveries in flight at once, over keep-alive connections.
    webhook_concurrency: int = 8
    # Retries wait this many seconds, doubling each time (with jitter), up to the cap.
    webhook_retry_first: float = 5.0
    webhook_retry_cap: float = 600.0
    # An event not delivered within this many seconds of its commit is `failed` (kept).
    webhook_max_age: float = 24 * 3600.0
    # 1: each event carries the raw SOAP envelope as text too.
    webhook_include_raw: int = 0
    # Operations (issue 19).  Who may GET /metrics: `mm7` (the MM7 path's allow list and
    # credentials), `open` (anyone who reaches the port), or `off` (404, and nothing is counted).
    metrics_access: str = "mm7"
    # Networks (CIDRs) allowed to scrape /metrics instead of the MM7 path's (with `mm7`).
    metrics_allow_ips: tuple[str, ...] = ()
    # `text` (a line a person reads) or `json` (one object per line) for the request log.
    log_format: str = "text"
    # gunicorn's access line (stdout): for `all` requests, for every request but an MM7 request
    # the request log wrote a line of (`other`: one line per request), or `off`.
    access_log: str = "other"
    # Seconds /health may take: past it, it answers 503 whatever the database is doing.
    health_timeout: float = 1.0
    # Days reports, read replies, MO messages and delivered events are kept; the service prunes
    # older ones every hour (mm7soap.retention), never a row whose event is not delivered.
    # 0 keeps everything for ever; `mm7soap prune` without --older-than uses it.
    retention_days: float = 0.0

    def __repr__(self) -> str:
        """Every setting but the secrets: passwords in URLs, the MMSC's password, the webhook secret."""
        from mm7soap.postgres import redacted

        shown = {setting.name: getattr(self, setting.name) for setting in fields(self)}
        shown["database"] = redacted(self.database)
        shown["webhook_url"] = redacted(self.webhook_url)
        for secret in ("auth_password", "webhook_secret"):
            if shown[secret]:
                shown[secret] = "***"
        return f"Settings({', '.join(f'{name}={value!r}' for name, value in shown.items())})"

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
        if self.metrics_access not in ("mm7", "open", "off"):
            raise ValueError(f"metrics_access must be mm7, open or off, not {self.metrics_access!r}")
        for network in self.metrics_allow_ips:
            ipaddress.ip_network(network, strict=False)
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be text or json, not {self.log_format!r}")
        if self.access_log not in ("all", "other", "off"):
            raise ValueError(f"access_log must be all, other or off, not {self.access_log!r}")
        if not 0 < self.health_timeout <= 30:
            raise ValueError("health_timeout must be above 0 and at most 30 seconds")
        if self.retention_days < 0:
            raise ValueError("retention_days must be 0 (keep for ever) or more")
        if self.auth_password and not self.auth_user:
            raise ValueError("auth_password is set but auth_user is not")
        if self.webhook_url:
            check_webhook(self)
        return self

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """`base` (the process's environment) with every setting as its `MM7SOAP_*` variable,
        so that a child process (the forwarder) reads exactly these settings."""
        environment = dict(os.environ if base is None else base)
        for f in fields(self):
            value = getattr(self, f.name)
            environment[ENV_PREFIX + f.name.upper()] = ",".join(value) if isinstance(value, tuple) else str(value)
        return environment

    @property
    def bind(self) -> str:
        return f"{self.host}:{self.port}"


def check_webhook(settings: Settings) -> None:
    """A webhook URL an HTTP client can post to, and a secret that signs (ValueError names
    what is wrong, without repeating the secret)."""
    url = urlsplit(settings.webhook_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError("webhook_url must be an http:// or https:// URL with a host")
    if not settings.webhook_secret:
        raise ValueError("webhook_url is set but webhook_secret is not (a Standard Webhooks secret, whsec_…)")
    webhook_key(settings.webhook_secret)
    if settings.webhook_concurrency < 1 or settings.webhook_timeout <= 0:
        raise ValueError("webhook_concurrency must be at least 1 and webhook_timeout above 0")
    if not 0 < settings.webhook_retry_first <= settings.webhook_retry_cap:
        raise ValueError("webhook_retry_first must be above 0 and at most webhook_retry_cap")


def webhook_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: base64 after an optional `whsec_`."""
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("webhook_secret is not base64 (whsec_ followed by base64)") from None
    if len(key) < 16:
        raise ValueError("webhook_secret is shorter than 16 bytes")
    return key


def parse_value(type_name: str, raw: str) -> Any:
    """An environment variable's text as the setting's type (lists are comma-separated)."""
    if type_name == "int":
        return int(raw)
    if type_name == "float":
        return float(raw)
    if type_name.startswith("tuple"):
        return tuple(item.strip() for item in raw.split(",") if item.strip())
    return raw
