"""The WSGI entry point: `gunicorn mm7soap.wsgi:application`, configured from `MM7SOAP_*`.

The application is built on first access (PEP 562), in the process that serves it: each
gunicorn worker builds its own after the fork, and importing this module has no effect.
"""

from __future__ import annotations

from typing import Any

from mm7soap.settings import Settings
from mm7soap.transport import MM7WsgiApp


def create_app(settings: Settings | None = None) -> MM7WsgiApp:
    """A ready WSGI application: the schema migrated, the eleven MM7 services built."""
    return MM7WsgiApp(settings or Settings.from_env())


_application: MM7WsgiApp | None = None


def __getattr__(name: str) -> Any:
    global _application
    if name != "application":
        raise AttributeError(name)
    if _application is None:
        _application = create_app()
    return _application
