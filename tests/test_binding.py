"""The fast binding (`mm7soap.binding`) against Spyne's own pipeline, as the oracle: for
every request the tests send, both must read the same objects and write the same answer."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from spyne import MethodContext
from spyne.model import ComplexModelBase

from mm7soap import binding, envelope, errors
from mm7soap.records import Inbound
from mm7soap.service import Call, Endpoint
from mm7soap.settings import Settings
from mm7soap.store import Store
from mm7soap.types import MM7Types
from tests.helpers import DATA, assert_xml_equal
from tests.test_deliver import VARIANTS as DELIVER_VARIANTS
from tests.test_deliver import envelope as envelope_of

# Every envelope of the test data an endpoint answers 1000 (templates aside).
REQUESTS = sorted(
    path.name for path in DATA.glob("*.xml") if b"{" not in path.read_bytes() and b"Req" in path.read_bytes()
)


def readable(name: str) -> envelope.ReadEnvelope | None:
    try:
        return envelope.read((DATA / name).read_bytes())
    except errors.MM7Error:
        return None


SERVED = [name for name in REQUESTS if readable(name) is not None]


@pytest.fixture
def endpoint(tmp_path: Path) -> Any:
    with Store(Settings(database=str(tmp_path / "b.db"))) as store:
        store.migrate()
        yield Endpoint(store, service_code="SVC-9")


def spyne_pipeline(endpoint: Endpoint, read: envelope.ReadEnvelope, raw: bytes) -> tuple[Any, bytes]:
    """Spyne's own request pipeline on the canonical envelope: (the request object, the answer)."""
    server = endpoint.servers[read.namespace]
    ctx = MethodContext(server, MethodContext.SERVER)
    ctx.udc = Call(envelope=read, inbound=Inbound(raw_envelope=raw))
    ctx.in_string = [raw]
    ctx = server.generate_contexts(ctx)[0]
    server.get_in_object(ctx)
    assert ctx.in_error is None, ctx.in_error
    request = ctx.in_object
    server.get_out_object(ctx)
    assert ctx.out_error is None and ctx.udc.error is None, (ctx.out_error, ctx.udc.error)
    server.get_out_string(ctx)
    return request, b"".join(ctx.out_string)


def plain(value: Any) -> Any:
    """A Spyne object as nested dicts, comparable whoever built it; times in UTC."""
    if isinstance(value, ComplexModelBase):
        return {name: plain(getattr(value, name, None)) for name in type(value).get_flat_type_info(type(value))}
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).astimezone(dt.timezone.utc)
    return value


# The DeliverReq field variants of tests/test_deliver.py, with their rarer types (lists,
# attributes, sequences), and a Previouslysentdateandtime.
VARIANTS = {
    **{f"deliver-{key}": envelope_of(children) for key, (children, _) in DELIVER_VARIANTS.items()},
    "deliver-previously-sent-date": envelope_of(
        '<Previouslysentdateandtime><DateTime sequence="1">2026-11-26T08:00:00+01:00</DateTime>'
        "</Previouslysentdateandtime>"
    ),
}
CORPUS = {**{name: (DATA / name).read_bytes() for name in SERVED}, **VARIANTS}


@pytest.mark.parametrize("name", CORPUS)
def test_binding_reads_what_spyne_reads_and_writes_what_spyne_writes(endpoint, name):
    raw = CORPUS[name]
    oracle_request, oracle_answer = spyne_pipeline(endpoint, envelope.read(raw), raw)
    read = envelope.read(raw)
    descriptor = endpoint.operations[read.namespace][read.operation]
    assert plain(binding.read(descriptor.in_message, read.request)) == plain(oracle_request)
    assert_xml_equal(endpoint.run(envelope.read(raw), Inbound(raw_envelope=raw)), oracle_answer)


def test_the_corpus_covers_every_operation():
    operations = {readable(name).operation for name in SERVED}
    assert operations == set(envelope.SERVED_OPERATIONS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-27T09:15:02.417Z", dt.datetime(2026, 11, 27, 9, 15, 2, 417000, dt.timezone.utc)),
        ("2026-11-27T09:15:02.1234567+09:00", dt.datetime(2026, 11, 27, 0, 15, 2, 123456, dt.timezone.utc)),
        ("2026-11-27T09:15:02-05:30", dt.datetime(2026, 11, 27, 14, 45, 2, tzinfo=dt.timezone.utc)),
        ("2026-11-27T09:15:02", dt.datetime(2026, 11, 27, 9, 15, 2)),
    ],
)
def test_xs_datetime(text, expected):
    got = binding.xs_datetime(text)
    assert got == expected and (got.tzinfo is None) == (expected.tzinfo is None)


def test_answer_escapes_what_it_echoes():
    types = MM7Types("urn:x")
    answer = types.GenericResponse(MM7Version="6.8.0 <&>", Status=types.Status(StatusCode=1000, StatusText="OK"))
    document = binding.answer_document("urn:x", "DeliveryReportRsp", types.GenericResponse, answer, "a&b<c>d")
    assert b'<TransactionID env:mustUnderstand="1">a&amp;b&lt;c&gt;d</TransactionID>' in document
    assert b"<MM7Version>6.8.0 &lt;&amp;&gt;</MM7Version>" in document
    without = binding.answer_document("urn:x", "DeliveryReportRsp", types.GenericResponse, answer, None)
    assert b"<env:Header>" not in without
