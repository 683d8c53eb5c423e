"""Hostile XML: no entity expansion, no DTD, no file or network access, bounded depth."""

from __future__ import annotations

import resource
import time

import pytest

from mm7soap.namespaces import MM7_NAMESPACES, SOAP_ENV
from tests.helpers import assert_fault, call

REL6 = MM7_NAMESPACES["REL-6-MM7-1-4"]


def report(doctype: str, status: str) -> bytes:
    return (
        f'<?xml version="1.0"?>{doctype}<env:Envelope xmlns:env="{SOAP_ENV}"><env:Body>'
        f'<DeliveryReportReq xmlns="{REL6}"><MessageID>h</MessageID><Recipient><Number>1</Number></Recipient>'
        f"<MMStatus>{status}</MMStatus></DeliveryReportReq></env:Body></env:Envelope>"
    ).encode()


BILLION_LAUGHS = report(
    '<!DOCTYPE e [<!ENTITY a "lollollollollollollollollollol">'
    + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(9))
    + "]>",
    "&j;",
)
QUADRATIC = report(f'<!DOCTYPE e [<!ENTITY x "{"x" * 50_000}">]>', "&x;" * 20_000)
XXE_FILE = report('<!DOCTYPE e [<!ENTITY f SYSTEM "file:///etc/passwd">]>', "&f;")
XXE_HTTP = report('<!DOCTYPE e [<!ENTITY f SYSTEM "http://127.0.0.1:9/evil.dtd">]>', "&f;")
EXTERNAL_DTD = report('<!DOCTYPE e SYSTEM "http://127.0.0.1:9/evil.dtd">', "Retrieved")
PARAMETER_ENTITY = report('<!DOCTYPE e [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>', "Retrieved")


def fastest_of_three(app, body: bytes) -> tuple[float, object]:
    timings, response = [], None
    for _ in range(3):
        started = time.perf_counter()
        response = call(app, body)
        timings.append(time.perf_counter() - started)
    return min(timings), response


@pytest.mark.parametrize(
    "body",
    [BILLION_LAUGHS, QUADRATIC, XXE_FILE, XXE_HTTP, EXTERNAL_DTD, PARAMETER_ENTITY],
    ids=["billion-laughs", "quadratic", "xxe-file", "xxe-http", "external-dtd", "parameter-entity"],
)
def test_entity_attacks_get_a_client_fault_quickly_with_nothing_leaked(app, body):
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    elapsed, response = fastest_of_three(app, body)
    assert_fault(response, "Client", 4004)
    assert elapsed < 0.1
    # Expanding any of these would take hundreds of MB or more; ru_maxrss is in KiB.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 64 * 1024
    assert b"root:" not in response.body and b"lollol" not in response.body
    assert list(app.store.delivery_reports()) == []


def test_deep_nesting_is_refused(app):
    depth = 100_000
    deep = "<x>" * depth + "</x>" * depth
    body = report("", "Retrieved").replace(b"<MMStatus>", f"<Vendor>{deep}</Vendor><MMStatus>".encode())
    elapsed, response = fastest_of_three(app, body)
    assert_fault(response, "Client", 4004)
    assert elapsed < 1.0
    assert list(app.store.delivery_reports()) == []
