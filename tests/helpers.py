"""Helpers shared by the tests: test data, in-process WSGI requests, XML comparison."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lxml import etree

from mm7soap.namespaces import SOAP_ENV

DATA = Path(__file__).parent / "data"
SINCH_CONTENT_TYPE = 'multipart/related; type="text/xml";'


def data(name: str) -> bytes:
    return (DATA / name).read_bytes()


def template(name: str, **values: str) -> bytes:
    return (DATA / name).read_text(encoding="utf-8").format(**values).encode("utf-8")


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def xml(self) -> etree._Element:
        return etree.fromstring(self.body)

    def find(self, path: str) -> etree._Element | None:
        """An element of the answer by a path of local names, e.g. 'Body/*/Status/StatusCode'."""
        return find_local(self.xml, path)

    def text(self, path: str) -> str | None:
        element = self.find(path)
        return None if element is None else (element.text or "")


def find_local(root: etree._Element, path: str) -> etree._Element | None:
    current: etree._Element | None = root
    for step in path.split("/"):
        if current is None:
            return None
        current = next(
            (c for c in current if isinstance(c.tag, str) and (step == "*" or etree.QName(c).localname == step)),
            None,
        )
    return current


def wsgi_environ(
    body: bytes = b"",
    *,
    method: str = "POST",
    path: str = "/mm7",
    query: str = "",
    content_type: str = "text/xml; charset=utf-8",
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The environ of one request, as a WSGI server makes it."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8080",
        "REMOTE_ADDR": "192.0.2.10",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "CONTENT_LENGTH": str(len(body)),
    }
    if content_type:
        environ["CONTENT_TYPE"] = content_type
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ


def call(app: Any, body: bytes = b"", **request: Any) -> Response:
    """One request to a WSGI app, in-process; `request` as `wsgi_environ` takes it."""
    environ = wsgi_environ(body, **request)
    captured: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]]) -> None:
        captured["status"] = int(status.split()[0])
        captured["headers"] = dict(response_headers)

    answer = app(environ, start_response)
    try:
        payload = b"".join(answer)
    finally:
        if hasattr(answer, "close"):  # as a WSGI server must (PEP 3333): the request's log and counts
            answer.close()
    return Response(captured["status"], captured["headers"], payload)


def canonical_xml(xml: bytes | etree._Element) -> bytes:
    """XML in C14N with whitespace-only text removed, for comparisons that ignore layout."""
    root = etree.fromstring(xml) if isinstance(xml, bytes) else xml
    parser = etree.XMLParser(remove_blank_text=True)
    root = etree.fromstring(etree.tostring(root), parser)
    for element in root.iter():
        if element.text is not None and not element.text.strip():
            element.text = None
        if element.tail is not None and not element.tail.strip():
            element.tail = None
    return etree.tostring(root, method="c14n")


def assert_xml_equal(got: bytes | etree._Element, expected: bytes | etree._Element) -> None:
    assert canonical_xml(got).decode() == canonical_xml(expected).decode()


def assert_fault(response: Response, faultcode: str, status_code: int, namespace: str | None = None) -> etree._Element:
    """The answer is a SOAP 1.1 Fault with VASPErrorRsp/Status/StatusCode; returns VASPErrorRsp."""
    assert response.status == 500
    assert response.headers["Content-Type"] == "text/xml; charset=utf-8"
    root = response.xml
    assert root.tag == f"{{{SOAP_ENV}}}Envelope"
    fault = response.find("Body/Fault")
    assert fault is not None and fault.tag == f"{{{SOAP_ENV}}}Fault"
    assert fault.find("faultcode").text == f"env:{faultcode}"
    assert fault.find("faultstring").text
    error = find_local(fault, "detail/VASPErrorRsp")
    assert error is not None
    if namespace is not None:
        assert etree.QName(error).namespace == namespace
    assert find_local(error, "Status/StatusCode").text == str(status_code)
    return error


def migrate_to(db: Any, version: int) -> None:
    """A database as an earlier release left it: the first `version` migrations, each recorded."""
    from mm7soap.schema import MIGRATIONS

    for number, migration in enumerate(MIGRATIONS[:version], start=1):
        migration(db)
        db.execute(f"PRAGMA user_version = {number}")
