"""The MM7 services: one Spyne Application per MM7 namespace, built by one factory.

A request flows: `envelope.read` (lenient, canonical) → the Application of its namespace →
its operation (`DeliveryReport`, `ReadReply`, `Deliver`) → `records` → `Store` → the
`…Rsp` with 1000.  Anything that
goes wrong on the way is an `errors.MM7Error`, answered by `soap.fault_document`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from spyne import Application, MethodContext, ServiceBase, rpc
from spyne.server import ServerBase

from mm7soap import binding, envelope, errors
from mm7soap.content import mm_content
from mm7soap.namespaces import MM7_NAMESPACES, default_version, mm7_name
from mm7soap.records import Inbound, delivery_report_row, message_row, part_rows, read_reply_row
from mm7soap.soap import MM7Soap11, fault_document
from mm7soap.store import Store, Stored
from mm7soap.types import MM7Types

log = logging.getLogger(__name__)

SUCCESS_TEXT = "Success"


@dataclass
class Call:
    """Spyne's user context (`ctx.udc`) for one request."""

    envelope: envelope.ReadEnvelope
    inbound: Inbound
    error: errors.MM7Error | None = None
    stored: Stored | None = None  # what the store made of it (a resend is `duplicate`)


@dataclass
class OperationContext:
    """What an operation reads of Spyne's MethodContext (`udc`, `in_header`) and sets
    (`out_header`), when it is called by `Endpoint.run` rather than by Spyne."""

    udc: Call
    in_header: Any = None
    out_header: Any = None


@dataclass(frozen=True)
class Answer:
    """The SOAP answer to one request: whether it is a Fault, and its bytes; and what the
    request was, as far as it was read, for the request log and the metrics."""

    fault: bool
    body: bytes
    operation: str = ""  # "DeliveryReport", "ReadReply", "Deliver"; "" when the envelope was not read
    namespace: str = ""  # the MM7 namespace by name, e.g. "REL-6-MM7-1-4"; "" when not read
    transaction_id: str | None = None
    message_id: str | None = None
    error: errors.MM7Error | None = None  # what the Fault says
    resent: bool = False  # a resend of a stored request: answered 1000, not stored again

    @property
    def status_code(self) -> int:
        return self.error.status_code if self.error is not None else 1000


class MM7Application(Application):
    """Keeps an MM7Error raised by a service on the context; Spyne would flatten it."""

    def call_wrapper(self, ctx: MethodContext) -> Any:
        try:
            return super().call_wrapper(ctx)
        except errors.MM7Error as exc:
            ctx.udc.error = exc
            raise


class HttpServer(ServerBase):
    """Spyne's server base, named as the SOAP-over-HTTP transport in the WSDL binding."""

    transport = "http://schemas.xmlsoap.org/soap/http"


def success(types: MM7Types, namespace: str, req: Any) -> dict[str, Any]:
    """MM7Version (the request's, echoed) and Status 1000 of every answer."""
    return {
        "MM7Version": req.MM7Version or default_version(namespace),
        "Status": binding.new(types.Status, StatusCode=1000, StatusText=SUCCESS_TEXT),
    }


def build_application(namespace: str, store: Store, service_code: str = "") -> MM7Application:
    """The MM7 service of one namespace: its operations, types and WSDL.

    Each operation commits what it received before it returns; a StoreError on the way
    becomes a 3000 Server fault, so the MMSC sends it again.
    """
    types = MM7Types(namespace)

    def operation(request: Any, name: str, response: Any) -> Any:
        return rpc(
            request,
            _in_header=(types.TransactionID,),
            _out_header=(types.TransactionID,),
            _body_style="bare",
            _returns=response,
            _faults=[types.VASPErrorRsp],
            _in_message_name=f"{name}Req",
            _out_message_name=f"{name}Rsp",
            _operation_name=name,
        )

    class MM7Service(ServiceBase):
        @operation(types.DeliveryReportReq, "DeliveryReport", types.GenericResponse)
        def DeliveryReport(ctx: MethodContext, req: Any) -> Any:
            """Store a delivery report, then acknowledge it (1000), or fault 3000."""
            ctx.udc.stored = store.save_delivery_report(delivery_report_row(req, ctx.udc.envelope, ctx.udc.inbound))
            ctx.out_header = ctx.in_header
            return binding.new(types.GenericResponse, **success(types, namespace, req))

        @operation(types.ReadReplyReq, "ReadReply", types.GenericResponse)
        def ReadReply(ctx: MethodContext, req: Any) -> Any:
            """Store a read reply, then acknowledge it (1000), or fault 3000."""
            ctx.udc.stored = store.save_read_reply(read_reply_row(req, ctx.udc.envelope, ctx.udc.inbound))
            ctx.out_header = ctx.in_header
            return binding.new(types.GenericResponse, **success(types, namespace, req))

        @operation(types.DeliverReq, "Deliver", types.DeliverRsp)
        def Deliver(ctx: MethodContext, req: Any) -> Any:
            """Store a mobile-originated MM and all its parts, then acknowledge it (1000)."""
            call = ctx.udc
            content = mm_content(req.Content.href if req.Content is not None else None, call.inbound.attachments)
            call.stored = store.save_message(message_row(req, call.envelope, call.inbound, content), part_rows(content))
            ctx.out_header = ctx.in_header
            return binding.new(types.DeliverRsp, **success(types, namespace, req), ServiceCode=service_code or None)

    return MM7Application(
        [MM7Service],
        tns=namespace,
        name="MM7",
        in_protocol=MM7Soap11(),
        out_protocol=MM7Soap11(),
    )


class Endpoint:
    """Answers the root XML part of an MM7 request with the bytes of a SOAP answer."""

    def __init__(self, store: Store, service_code: str = "") -> None:
        self.store = store
        self.servers = {ns: HttpServer(build_application(ns, store, service_code)) for ns in MM7_NAMESPACES.values()}
        # Each namespace's operations by request element name, e.g. "DeliveryReportReq".
        self.operations = {
            ns: {key.rsplit("}", 1)[1]: methods[0] for key, methods in server.app.interface.service_method_map.items()}
            for ns, server in self.servers.items()
        }

    def answer(self, inbound: Inbound) -> Answer:
        read: envelope.ReadEnvelope | None = None
        try:
            read = envelope.read(inbound.raw_envelope, inbound.charset)
            call = Call(envelope=read, inbound=inbound)
            body = self.perform(call)
            resent = call.stored is not None and call.stored.duplicate
            return Answer(False, body, **described(read), resent=resent)
        except errors.MM7Error as exc:
            return self.fault(exc, read, inbound)
        except Exception:
            log.exception("unexpected failure answering an MM7 request")
            return self.fault(errors.MM7Error("unexpected server error"), read, inbound)

    def run(self, read: envelope.ReadEnvelope, inbound: Inbound) -> bytes:
        return self.perform(Call(envelope=read, inbound=inbound))

    def perform(self, call: Call) -> bytes:
        """Call the request's operation on what `binding` read of the canonical request, and
        write its answer with `binding`: Spyne's declarations, without Spyne's per-request
        machinery (issue 7).  `tests/test_binding.py` runs Spyne's own pipeline beside it.
        What the store made of the request is left on `call`."""
        read = call.envelope
        descriptor = self.operations[read.namespace][read.operation]
        request = binding.read(descriptor.in_message, read.request)
        context = OperationContext(udc=call, in_header=read.transaction_id)
        response = descriptor.function(context, request)
        echoed = read.transaction_id if context.out_header is not None else None
        name = read.operation.removesuffix("Req") + "Rsp"
        return binding.answer_document(read.namespace, name, type(response), response, echoed)

    def fault(self, error: errors.MM7Error, read: envelope.ReadEnvelope | None, inbound: Inbound) -> Answer:
        """The Fault for `error`, in the request's namespace as far as it could be read."""
        if read is not None:
            reply = envelope.Reply(read.namespace, read.mm7_version, read.transaction_id)
            return Answer(True, fault_document(error, reply), **described(read), error=error)
        reply = envelope.read_reply(inbound.raw_envelope, inbound.charset)
        namespace = (mm7_name(reply.namespace) or "") if reply.operation else ""  # only a served request's
        body = fault_document(error, reply)
        return Answer(True, body, reply.operation.removesuffix("Req"), namespace, reply.transaction_id, error=error)


def described(read: envelope.ReadEnvelope) -> dict[str, Any]:
    """What an Answer tells of the request it answers."""
    message_id = read.request.child("MessageID")
    return {
        "operation": read.operation.removesuffix("Req"),
        "namespace": read.namespace_name,
        "transaction_id": read.transaction_id,
        "message_id": message_id.text if message_id is not None else None,
    }


__all__ = ["Answer", "Endpoint", "build_application"]
