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
    # The HTTP status when it is not the fault default (500, or 200 by setting).
    http_status: int | None = None
    # Extra HTTP headers of the answer.
    http_headers: tuple[tuple[str, str], ...] = ()

    def __init__(self, details: str = "") -> None:
        super().__init__(details or self.status_text)
        self.details = details


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


class MustUnderstandError(ValidationError):
    """A SOAP header addressed to us with mustUnderstand="1" that we do not understand."""

    faultcode = "MustUnderstand"

    def __init__(self, header: str) -> None:
        super().__init__(f"the SOAP header {header} must be understood and is not")
        self.header = header


class VersionMismatchError(ValidationError):
    """A SOAP 1.2 (or other) envelope: MM7 is SOAP 1.1."""

    faultcode = "VersionMismatch"


class NotFoundError(MM7Error):
    """A path that is not the MM7 endpoint."""

    faultcode = "Client"
    status_code = 4000
    status_text = "General service error"
    http_status = 404


class MethodNotAllowedError(MM7Error):
    """An HTTP method other than POST (or GET for the WSDL)."""

    faultcode = "Client"
    status_code = 4003
    status_text = "Unsupported operation"
    http_status = 405
    http_headers = (("Allow", "POST, GET"),)


class AuthenticationError(MM7Error):
    """Missing or wrong HTTP Basic credentials."""

    faultcode = "Client"
    status_code = 4001
    status_text = "Improper identification"
    http_status = 401
    http_headers = (("WWW-Authenticate", 'Basic realm="mm7soap"'),)


class ForbiddenError(MM7Error):
    """A client address outside the allow list."""

    faultcode = "Client"
    status_code = 4007
    status_text = "Service denied"
    http_status = 403


class TooLargeError(MM7Error):
    """A body over the size limit; the connection is closed rather than read to the end."""

    faultcode = "Client"
    status_code = 2004
    status_text = "Multimedia content refused"
    http_status = 413
    http_headers = (("Connection", "close"),)


class RequestTimeoutError(ValidationError):
    """A client that stopped sending its body, or went away, before it was complete."""

    http_status = 408
    http_headers = (("Connection", "close"),)


class BadHttpError(ValidationError):
    """An HTTP request gunicorn could not parse (request line, headers, chunking)."""

    http_headers = (("Connection", "close"),)

    def __init__(self, details: str, http_status: int) -> None:
        super().__init__(details)
        self.http_status = http_status


class UndecodableBodyError(ValidationError):
    """A compressed body (Content-Encoding) that is corrupt or cut short: the client's fault, 400."""

    http_status = 400


class UnsupportedEncodingError(ValidationError):
    """A Content-Encoding this endpoint cannot undo (br, compress, zstd, …): 415, and
    `Accept-Encoding` lists the ones it can (RFC 7694)."""

    http_status = 415

    def __init__(self, details: str, supported: tuple[str, ...]) -> None:
        super().__init__(details)
        self.http_headers = (("Accept-Encoding", ", ".join(supported)),)


class StoreError(MM7Error):
    """3000: the report could not be committed; the MMSC must retry, so never a 1000."""

    faultcode = "Server"
    status_code = 3000
    status_text = "Server Error"
