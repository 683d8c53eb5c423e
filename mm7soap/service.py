"""The MM7 services: one Spyne Application per MM7 namespace, built by one factory.

A request flows: `envelope.read` (lenient, canonical) → the Application of its namespace →
`DeliveryReport` → `Store.save_delivery_report` → `DeliveryReportRsp` 1000.  Anything that
goes wrong on the way is an `errors.MM7Error`, answered by `soap.fault_document`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from spyne import Application, MethodContext, ServiceBase, rpc
from spyne.server import ServerBase

from mm7soap import envelope, errors
from mm7soap.namespaces import MM7_NAMESPACES, default_version
from mm7soap.soap import MM7Soap11, fault_document
from mm7soap.store import Store, utc_timestamp
from mm7soap.types import ADDRESS_KINDS, MM7Types

log = logging.getLogger(__name__)

SUCCESS_TEXT = "Success"


@dataclass(frozen=True)
class Inbound:
    """What the HTTP request says about a message, beyond its envelope."""

    raw_envelope: bytes
    # The charset the HTTP Content-Type (or the MIME root part) named, if any.
    charset: str | None = None
    client_address: str | None = None
    operator_id: str | None = None
    received_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


@dataclass
class Call:
    """Spyne's user context (`ctx.udc`) for one request."""

    envelope: envelope.ReadEnvelope
    inbound: Inbound
    error: errors.MM7Error | None = None


@dataclass(frozen=True)
class Answer:
    """The SOAP answer to one request: whether it is a Fault, and its bytes."""

    fault: bool
    body: bytes


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


def address_columns(prefix: str, address: Any) -> dict[str, Any]:
    """recipient/sender, its kind (Number, ShortCode, RFC2822Address) and its attributes."""
    for kind in ADDRESS_KINDS:
        value = getattr(address, kind, None) if address is not None else None
        if value is not None:
            return {
                prefix: value.value,
                f"{prefix}_kind": kind,
                f"{prefix}_display_only": None if value.displayOnly is None else int(value.displayOnly),
                f"{prefix}_address_coding": value.addressCoding,
                f"{prefix}_address_id": value.id,
            }
    return {}


def delivery_report_row(req: Any, call: Call) -> dict[str, Any]:
    """The stored row of a delivery report: every field, as sent and normalised."""
    read, inbound = call.envelope, call.inbound
    capabilities = req.UACapabilities
    return {
        "received_at": utc_timestamp(inbound.received_at),
        "message_id": req.MessageID,
        **address_columns("recipient", req.Recipient),
        **address_columns("sender", req.Sender),
        "date_sent": read.as_sent.get("Date"),
        "date_utc": utc_timestamp(req.Date) if req.Date is not None else None,
        "mm_status": req.MMStatus,
        "mm_status_extension": req.MMStatusExtension,
        "status_text": req.StatusText,
        "mms_relay_server_id": req.MMSRelayServerID,
        "applic_id": req.ApplicID,
        "reply_applic_id": req.ReplyApplicID,
        "aux_applic_info": req.AuxApplicInfo,
        "ua_prof": capabilities.UAProf if capabilities is not None else None,
        "ua_timestamp": read.as_sent.get("UACapabilities/TimeStamp"),
        "transaction_id": read.transaction_id,
        "namespace": read.namespace_name,
        "mm7_version": req.MM7Version,
        "operator_id": inbound.operator_id,
        "client_address": inbound.client_address,
        "raw_envelope": inbound.raw_envelope,
    }


def build_application(namespace: str, store: Store) -> MM7Application:
    """The MM7 service of one namespace: its operations, types and WSDL."""
    types = MM7Types(namespace)

    class MM7Service(ServiceBase):
        @rpc(
            types.DeliveryReportReq,
            _in_header=(types.TransactionID,),
            _out_header=(types.TransactionID,),
            _body_style="bare",
            _returns=types.GenericResponse,
            _in_message_name="DeliveryReportReq",
            _out_message_name="DeliveryReportRsp",
            _operation_name="DeliveryReport",
        )
        def DeliveryReport(ctx: MethodContext, req: Any) -> Any:
            """Store a delivery report, then acknowledge it (1000), or fault 3000."""
            store.save_delivery_report(delivery_report_row(req, ctx.udc))
            ctx.out_header = ctx.in_header
            return types.GenericResponse(
                MM7Version=req.MM7Version or default_version(namespace),
                Status=types.Status(StatusCode=1000, StatusText=SUCCESS_TEXT),
            )

    return MM7Application(
        [MM7Service],
        tns=namespace,
        name="MM7",
        in_protocol=MM7Soap11(),
        out_protocol=MM7Soap11(),
    )


class Endpoint:
    """Answers the root XML part of an MM7 request with the bytes of a SOAP answer."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.servers = {ns: HttpServer(build_application(ns, store)) for ns in MM7_NAMESPACES.values()}

    def answer(self, inbound: Inbound) -> Answer:
        read: envelope.ReadEnvelope | None = None
        try:
            read = envelope.read(inbound.raw_envelope, inbound.charset)
            return Answer(fault=False, body=self.run(read, inbound))
        except errors.MM7Error as exc:
            return self.fault(exc, read, inbound)
        except Exception:
            log.exception("unexpected failure answering an MM7 request")
            return self.fault(errors.MM7Error("unexpected server error"), read, inbound)

    def run(self, read: envelope.ReadEnvelope, inbound: Inbound) -> bytes:
        """Spyne's request pipeline, on the already-read envelope."""
        server = self.servers[read.namespace]
        ctx = MethodContext(server, MethodContext.SERVER)
        ctx.udc = Call(envelope=read, inbound=inbound)
        ctx.in_string = [inbound.raw_envelope]
        ctx = server.generate_contexts(ctx)[0]
        if ctx.in_error is None:
            server.get_in_object(ctx)
        if ctx.in_error is None:
            server.get_out_object(ctx)
        if ctx.udc.error is not None:
            raise ctx.udc.error
        if ctx.in_error is not None or ctx.out_error is not None:
            log.error("Spyne could not process %s: %s", read.operation, ctx.in_error or ctx.out_error)
            raise errors.MM7Error("the request could not be processed")
        server.get_out_string(ctx)
        return b"".join(ctx.out_string)

    def fault(self, error: errors.MM7Error, read: envelope.ReadEnvelope | None, inbound: Inbound) -> Answer:
        """The Fault for `error`, in the request's namespace as far as it could be read."""
        if read is not None:
            reply = envelope.Reply(read.namespace, read.mm7_version, read.transaction_id)
        else:
            reply = envelope.read_reply(inbound.raw_envelope, inbound.charset)
        return Answer(fault=True, body=fault_document(error, reply))


__all__ = ["Answer", "Endpoint", "Inbound", "build_application"]
