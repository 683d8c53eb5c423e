"""What can go wrong with an MM7 request, each carrying what its SOAP Fault must say.

Every class maps to one row of the error contract in the README: a SOAP 1.1 `faultcode`
(`Client` when the request is at fault, `Server` when we are) and the MM7 StatusCode
(spec.md §6) that goes into `detail/VASPErrorRsp/Status`.
"""

from __future__ import annotations


class MM7Error(Exception):
    """Base class: answered as a SOAP Fault holding a VASPErrorRsp."""

    faultcode = "Server"
    status_code = 3000
    status_text = "Server Error"

    def __init__(self, details: str = "", *, status_text: str | None = None) -> None:
        super().__init__(details or self.status_text)
        self.details = details
        if status_text is not None:
            self.status_text = status_text


class ValidationError(MM7Error):
    """4004: the request could not be parsed, or a mandatory element is missing."""

    faultcode = "Client"
    status_code = 4004
    status_text = "Validation error"


class MissingElement(ValidationError):
    """4004 naming the mandatory element that could not be identified."""

    def __init__(self, element: str, operation: str) -> None:
        super().__init__(f"{operation} has no {element}")
        self.element = element


class UnsupportedVersion(MM7Error):
    """4002: the Body element is in a namespace that is none of the MM7 schemas."""

    faultcode = "Client"
    status_code = 4002
    status_text = "Unsupported version"


class UnsupportedOperation(MM7Error):
    """4003: an MM7 operation this endpoint does not serve (SubmitReq, CancelReq, …)."""

    faultcode = "Client"
    status_code = 4003
    status_text = "Unsupported operation"


class StoreError(MM7Error):
    """3000: the report could not be committed; the MMSC must retry, so never a 1000."""

    faultcode = "Server"
    status_code = 3000
    status_text = "Server Error"
