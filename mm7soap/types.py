"""The MM7 message types (spec.md §4), declared as Spyne models for one namespace.

`MM7Types(namespace)` builds the same classes in each of the eleven MM7 namespaces, so every
namespace gets a service, a WSDL and answers of its own.  The types describe the canonical
form of a message (REL-6-MM7-1-4 element names and order); what MMSCs actually send is
brought into that form first by `mm7soap.envelope`.
"""

from __future__ import annotations

from typing import Any

from spyne import AnyXml, Boolean, ComplexModel, DateTime, Unicode, UnsignedInteger
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

# The three ways an MM7 address may be written; an address holds exactly one of them.
ADDRESS_KINDS = ("RFC2822Address", "Number", "ShortCode")


def optional(type_: Any, doc: str = "") -> Any:
    return type_.customize(min_occurs=0, nillable=False, doc=doc)


def required(type_: Any, doc: str = "") -> Any:
    return type_.customize(min_occurs=1, nillable=False, doc=doc)


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
            addressCoding = XmlAttribute(Unicode(values=["encrypted", "obfuscated"]))
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
                ("Sender", optional(Address)),
                ("Date", optional(DateTime, "When the MMSC handled the message")),
                (
                    "MMStatus",
                    required(Unicode, "One of " + ", ".join(MM_DELIVERY_STATUSES) + " or as sent"),
                ),
                (
                    "MMStatusExtension",
                    optional(Unicode(values=["RejectionByMMSRecipient", "RejectionByOtherRS"])),
                ),
                ("StatusText", optional(Unicode)),
                ("ApplicID", optional(Unicode)),
                ("ReplyApplicID", optional(Unicode)),
                ("AuxApplicInfo", optional(Unicode)),
                ("UACapabilities", optional(UACapabilities)),
            ]

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
        self.TransactionID = TransactionID
