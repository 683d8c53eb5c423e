"""Judging an MM7 answer as an MMSC does, one named check at a time.

An MMSC (Sinch: sinch.md §3) retries anything but HTTP 200 with a proper SOAP answer
carrying the matching TransactionID and Status 1000.  Each check here says what it
looked at, so that `mm7soap send` can name exactly what a deployment got wrong.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from lxml import etree

from mm7soap.mmsc import Connection, HttpReply, Request, Stamps, fresh, utc_now
from mm7soap.namespaces import SOAP_ENV, local_name


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str = ""


def find(element: etree._Element | None, *path: str) -> etree._Element | None:
    """A descendant by local names, one step per name."""
    for step in path:
        if element is None:
            return None
        element = next((c for c in element if isinstance(c.tag, str) and local_name(c.tag) == step), None)
    return element


def text(element: etree._Element | None) -> str | None:
    return None if element is None else (element.text or "").strip()


def check_answer(request: Request, reply: HttpReply) -> list[Check]:
    """Every check an MMSC makes of the answer to `request`; all must pass."""
    checks = [
        Check("HTTP 200", reply.status == 200, f"HTTP {reply.status} {reply.reason}"),
        Check(
            "Content-Type text/xml",
            reply.header("Content-Type").lower().startswith("text/xml"),
            reply.header("Content-Type") or "none",
        ),
    ]
    try:
        root = etree.fromstring(reply.body, etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError as exc:
        return [*checks, Check("SOAP 1.1 Envelope", False, f"not XML: {exc}")]
    if root.tag != f"{{{SOAP_ENV}}}Envelope":
        return [*checks, Check("SOAP 1.1 Envelope", False, f"the root is {root.tag}")]
    checks.append(Check("SOAP 1.1 Envelope", True))
    return checks + body_checks(request, root) + header_checks(request, root)


def body_checks(request: Request, root: etree._Element) -> list[Check]:
    ns, wanted = request.namespace, request.operation.removesuffix("Req") + "Rsp"
    body = find(root, "Body")
    answer = next((c for c in body if isinstance(c.tag, str)), None) if body is not None else None
    if answer is None:
        return [Check(f"{wanted} in the request's namespace", False, "the Body is empty")]
    got = etree.QName(answer)
    detail = f"{{{got.namespace}}}{got.localname}"
    if got.localname == "Fault":
        code = text(find(answer, "detail", "VASPErrorRsp", "Status", "StatusCode"))
        detail = f"a Fault: {text(find(answer, 'faultstring'))} (StatusCode {code})"
    checks = [Check(f"{wanted} in the request's namespace", got.localname == wanted and got.namespace == ns, detail)]
    version = text(find(answer, "MM7Version"))
    checks.append(Check("MM7Version echoed", version == request.mm7_version, f"{version!r}"))
    code = text(find(answer, "Status", "StatusCode"))
    status_text = text(find(answer, "Status", "StatusText"))
    checks.append(Check("StatusCode 1000", code == "1000", f"{code!r} {status_text or ''}".strip()))
    return checks


def header_checks(request: Request, root: etree._Element) -> list[Check]:
    transaction = find(root, "Header", "TransactionID")
    echoed = text(transaction)
    must = None if transaction is None else transaction.get(f"{{{SOAP_ENV}}}mustUnderstand")
    return [
        Check("TransactionID echoed", echoed == request.transaction_id, f"{echoed!r}"),
        Check('TransactionID mustUnderstand="1"', must in ("1", "true"), f"{must!r}"),
    ]


def passed(checks: list[Check]) -> bool:
    return all(check.passed for check in checks)


@dataclass(frozen=True)
class Outcome:
    """One request sent: the answer (None when HTTP failed) and the checks made of it."""

    request: Request
    reply: HttpReply | None
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.reply is not None and passed(self.checks)


def send(request: Request, connect: Callable[[], Connection]) -> Outcome:
    """Post one request on a new connection and check the answer."""
    connection = connect()
    try:
        return post_and_check(connection, request)
    finally:
        connection.close()


def post_and_check(connection: Connection, request: Request) -> Outcome:
    try:
        reply = connection.post(request)
    except (OSError, http.client.HTTPException) as exc:
        return Outcome(request, None, [Check("HTTP answer", False, f"{type(exc).__name__}: {exc}")])
    return Outcome(request, reply, check_answer(request, reply))


def send_many(
    request: Request, connect: Callable[[], Connection], count: int, concurrency: int, resend: bool = False
) -> list[Outcome]:
    """`count` requests over `concurrency` keep-alive connections at once, as an MMSC flushes
    a queue of reports after a campaign: each a new one (its own TransactionID and Date), or
    with `resend` the very same request each time, as an MMSC retrying one it got no answer to."""
    local = threading.local()
    opened: list[Connection] = []
    lock = threading.Lock()
    stamps = Stamps()
    same = replace(request, sent_at=request.sent_at or utc_now())

    def one(number: int) -> Outcome:
        if not hasattr(local, "connection"):
            local.connection = connect()
            with lock:
                opened.append(local.connection)
        return post_and_check(local.connection, same if resend else fresh(request, number, stamps.next()))

    try:
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            return list(pool.map(one, range(1, count + 1)))
    finally:
        for connection in opened:
            connection.close()
