"""The MM7 message types (spec.md §4), declared as Spyne models for one namespace.

`MM7Types(namespace)` builds the same classes in each of the eleven MM7 namespaces, so every
namespace gets a service, a WSDL and answers of its own.  The types describe the canonical
form of a message (REL-6-MM7-1-4 element names and order); what MMSCs actually send is
brought into that form first by `mm7soap.envelope`.
"""

from __future__ import annotations

from typing import Any

from spyne import AnyUri, AnyXml, Boolean, ComplexModel, DateTime, Unicode, UnsignedInteger
from spyne.model.complex import XmlAttribute, XmlData

# The 3GPP delivery states (spec.md §5), documented in the WSDL.  MMStatus stays a plain
# string on the wire: MMSCs send values outside this list (Sinch: NotSupported,
# Unreachable, Unrecognized; KT: 1000) and those reports must still be stored.
MM_DELIVERY_STATUSES = (
    "Expired",
    "Retrieved",
    "Rejected",
    "Indeterminate",
    "Forwarded",
    "Deferred",
    "Unrecognised",
    "DeliveryConditionNotMet",
)

# The read states of a ReadReplyReq (spec.md §4.4); KT sends `1000`, stored as sent too.
MM_READ_STATUSES = ("Read", "Deleted", "Indeterminate")

# The three ways an MM7 address may be written; an address holds exactly one of them.
ADDRESS_KINDS = ("RFC2822Address", "Number", "ShortCode")


def optional(type_: Any, doc: str = "") -> Any:
    return type_.customize(min_occurs=0, nillable=False, doc=doc)


def required(type_: Any, doc: str = "") -> Any:
    return type_.customize(min_occurs=1, nillable=False, doc=doc)


def enumeration(namespace: str, type_name: str, values: tuple[str, ...], min_occurs: int = 0) -> Any:
    """A string restricted to `values`, as a named type of the MM7 namespace.

    Made in one step: customizing it again would derive an anonymous type from it.  The
    restriction is the contract (what a client generated from the WSDL sends), not a
    check on what arrives: values outside it are stored as sent (spec.md §5).
    """
    return Unicode.customize(
        values=list(values), type_name=type_name, __namespace__=namespace, min_occurs=min_occurs, nillable=False
    )


def status_enumeration(namespace: str, type_name: str, values: tuple[str, ...]) -> Any:
    """MMStatus: required, one of the 3GPP values in the WSDL, stored as sent whatever it is."""
    return enumeration(namespace, type_name, values, min_occurs=1)


def repeated(type_: Any) -> Any:
    return type_.customize(min_occurs=0, max_occurs="unbounded", nillable=False)


# The fields every read or delivery report ends with (REL-6, spec.md §4.2 and §4.4).
APPLICATION_FIELDS = ("ApplicID", "ReplyApplicID", "AuxApplicInfo")


class MM7Types:
    """The Spyne classes for one MM7 namespace, as attributes of this object."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

        class Base(ComplexModel):
            __namespace__ = namespace

        class AddressValue(Base):
            """One address: its text plus the REL-6 attributes."""

            __type_name__ = "addressValueType"
            value = XmlData(Unicode)
            displayOnly = XmlAttribute(Boolean)
            addressCoding = XmlAttribute(enumeration(namespace, "addressCodingType", ("encrypted", "obfuscated")))
            id = XmlAttribute(Unicode)

        class Address(Base):
            """A choice of RFC2822Address, Number or ShortCode (one of them is present)."""

            __type_name__ = "addressType"
            _type_info = [(kind, optional(AddressValue)) for kind in ADDRESS_KINDS]

        class UACapabilities(Base):
            __type_name__ = "capabilitiesType"
            UAProf = XmlAttribute(Unicode)
            TimeStamp = XmlAttribute(DateTime)

        class Status(Base):
            __type_name__ = "responseStatusType"
            _type_info = [
                ("StatusCode", required(UnsignedInteger)),
                ("StatusText", required(Unicode)),
                ("Details", optional(AnyXml)),
            ]

        class GenericResponse(Base):
            __type_name__ = "genericResponseType"
            _type_info = [
                ("MM7Version", required(Unicode)),
                ("Status", required(Status)),
            ]

        class DeliveryReportReq(Base):
            __type_name__ = "deliveryReportReqType"
            _type_info = [
                ("MM7Version", required(Unicode)),
                ("MMSRelayServerID", optional(Unicode)),
                ("MessageID", required(Unicode, "The MessageID the MMSC gave in SubmitRsp")),
                ("Recipient", required(Address)),
                ("Sender", required(Address)),
                ("Date", required(DateTime, "When the MMSC handled the message")),
                ("MMStatus", status_enumeration(namespace, "mmDeliveryStatusType", MM_DELIVERY_STATUSES)),
                (
                    "MMStatusExtension",
                    enumeration(namespace, "mmStatusExtensionType", ("RejectionByMMSRecipient", "RejectionByOtherRS")),
                ),
                ("StatusText", optional(Unicode)),
                *[(name, optional(Unicode)) for name in APPLICATION_FIELDS],
                ("UACapabilities", optional(UACapabilities)),
            ]

        class ReadReplyReq(Base):
            __type_name__ = "readReplyReqType"
            _type_info = [
                ("MM7Version", required(Unicode)),
                ("MMSRelayServerID", optional(Unicode)),
                ("MessageID", required(Unicode, "The MessageID the MMSC gave in SubmitRsp")),
                ("Recipient", required(Address, "The party that read (or deleted) the MM")),
                ("Sender", required(Address, "The original sender of the MM (the VASP's address)")),
                ("TimeStamp", required(DateTime)),
                ("MMStatus", status_enumeration(namespace, "mmReadStatusType", MM_READ_STATUSES)),
                ("StatusText", optional(Unicode)),
                *[(name, optional(Unicode)) for name in APPLICATION_FIELDS],
            ]

        class MultiAddress(Base):
            """One recipient list (To, Cc or Bcc): one or more addresses."""

            __type_name__ = "multiAddressType"
            _type_info = [(kind, repeated(AddressValue)) for kind in ADDRESS_KINDS]

        class Recipients(Base):
            __type_name__ = "recipientsType"
            _type_info = [(name, optional(MultiAddress)) for name in ("To", "Cc", "Bcc")]

        class UserAgent(Base):
            __type_name__ = "userAgentType"
            _type_info = [
                *[(kind, optional(AddressValue)) for kind in ADDRESS_KINDS],
                ("sequence", XmlAttribute(UnsignedInteger)),
            ]

        class PreviouslySentBy(Base):
            __type_name__ = "previouslySentByType"
            _type_info = [("UserAgent", repeated(UserAgent))]

        class SentDateTime(Base):
            __type_name__ = "previouslySentDateTimeType"
            value = XmlData(DateTime)
            sequence = XmlAttribute(UnsignedInteger)

        class PreviouslySentDateAndTime(Base):
            __type_name__ = "previouslySentDateAndTimeType"
            _type_info = [("DateTime", repeated(SentDateTime))]

        class Content(Base):
            """Where the MM content is: `href="cid:…"` names a MIME part of the request."""

            __type_name__ = "contentReferenceType"
            href = XmlAttribute(AnyUri)
            allowAdaptations = XmlAttribute(Boolean)

        class DeliverReq(Base):
            __type_name__ = "deliverReqType"
            _type_info = [
                ("MM7Version", required(Unicode)),
                ("MMSRelayServerID", optional(Unicode)),
                ("VASPID", optional(Unicode)),
                ("VASID", optional(Unicode)),
                ("LinkedID", optional(Unicode, "The MMSC's id of this MO; quote it in a reply")),
                ("Sender", required(Address, "The subscriber who sent the MM")),
                ("Recipients", optional(Recipients)),
                ("Previouslysentby", optional(PreviouslySentBy)),
                ("Previouslysentdateandtime", optional(PreviouslySentDateAndTime)),
                ("SenderSPI", optional(Unicode)),
                ("RecipientSPI", optional(Unicode)),
                ("TimeStamp", optional(DateTime)),
                ("ReplyChargingID", optional(Unicode)),
                ("Priority", enumeration(namespace, "priorityType", ("High", "Normal", "Low"))),
                ("Subject", optional(Unicode)),
                *[(name, optional(Unicode)) for name in APPLICATION_FIELDS],
                ("UACapabilities", optional(UACapabilities)),
                ("Content", optional(Content)),
            ]

        class VASPErrorRsp(GenericResponse):
            """The detail of every Fault this endpoint answers (spec.md §4.7)."""

            __type_name__ = "VASPErrorRsp"

        class DeliverRsp(GenericResponse):
            """genericResponseType extended with the VASP's ServiceCode (after Status)."""

            __type_name__ = "deliverRspType"
            _type_info = [("ServiceCode", optional(Unicode))]

        class TransactionID(Base):
            """The SOAP header that pairs a request with its answer."""

            __type_name__ = "TransactionID"
            value = XmlData(Unicode)

        self.AddressValue = AddressValue
        self.Address = Address
        self.UACapabilities = UACapabilities
        self.Status = Status
        self.GenericResponse = GenericResponse
        self.DeliveryReportReq = DeliveryReportReq
        self.ReadReplyReq = ReadReplyReq
        self.Recipients = Recipients
        self.Content = Content
        self.DeliverReq = DeliverReq
        self.DeliverRsp = DeliverRsp
        self.VASPErrorRsp = VASPErrorRsp
        self.TransactionID = TransactionID
