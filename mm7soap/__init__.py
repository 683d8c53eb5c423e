"""mm7soap: an MM7 (3GPP TS 23.140) SOAP endpoint that stores before it acknowledges."""

from mm7soap import compat  # noqa: F401 - must come before anything imports Spyne
from mm7soap.settings import Settings

__all__ = ["Settings"]
