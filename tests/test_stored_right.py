"""Acknowledged means stored, whole and right (issue 17): what a 1000 promises, example by example.

The field-by-field properties over generated values are in `tests/test_field_properties.py`.
"""

from __future__ import annotations

import json

import pytest

from mm7soap.namespaces import MM7_NAMESPACES, SOAP_ENV
from mm7soap.schema import MIGRATIONS
from mm7soap.settings import Settings
from mm7soap.store import Store, transaction
from mm7soap.transport import MM7WsgiApp
from tests.backends import INTEGRITY_ERRORS, only_sqlite
from tests.helpers import assert_fault, call, migrate_to, template
from tests.test_deliver import envelope as deliver_envelope

REL6 = MM7_NAMESPACES["REL-6-MM7-1-4"]


@pytest.fixture
def settings(backend_settings: Settings) -> Settings:
    """Every test here runs on SQLite and on PostgreSQL, unless narrowed to one engine."""
    return backend_settings


def report(tx: str = "tx-1", status: str = "Retrieved", **fields: str) -> bytes:
    """A DeliveryReportReq; `fields` replace (or add) whole children, as XML."""
    children = {
        "MM7Version": "<MM7Version>6.8.0</MM7Version>",
        "MessageID": "<MessageID>msg-1</MessageID>",
        "Recipient": "<Recipient><Number>15551230001</Number></Recipient>",
        "Sender": "<Sender><ShortCode>24680</ShortCode></Sender>",
        "Date": "<Date>2026-11-27T10:00:00Z</Date>",
        "MMStatus": f"<MMStatus>{status}</MMStatus>",
        **fields,
    }
    return (
        f'<env:Envelope xmlns:env="{SOAP_ENV}" xmlns="{REL6}"><env:Header>'
        f'<TransactionID env:mustUnderstand="1">{tx}</TransactionID></env:Header><env:Body>'
        f"<DeliveryReportReq>{''.join(children.values())}</DeliveryReportReq></env:Body></env:Envelope>"
    ).encode()


def read_reply(tx: str, status: str) -> bytes:
    return template(
        "read_reply_template.xml",
        namespace=REL6,
        transaction_id=tx,
        version="6.8.0",
        message_id="msg-1",
        recipient_tag="Recipient",
        time_tag="TimeStamp",
        time_stamp="2026-11-27T10:00:00Z",
        status=status,
    )


def acknowledged(app, body: bytes, rsp: str = "DeliveryReportRsp") -> None:
    response = call(app, body)
    assert response.status == 200, response.body
    assert response.text(f"Body/{rsp}/Status/StatusCode") == "1000"


def reports(app) -> list[dict]:
    return sorted(app.store.delivery_reports(), key=lambda row: row["id"])


# --- Resends: the same content, never one id --------------------------------------------


def test_forwarded_then_retrieved_under_one_transaction_id_are_two_reports(app):
    acknowledged(app, report(status="Forwarded", Date="<Date>2026-11-27T10:00:00Z</Date>"))
    acknowledged(app, report(status="Retrieved", Date="<Date>2026-11-27T10:05:00Z</Date>"))
    assert [(r["mm_status"], r["date_sent"]) for r in reports(app)] == [
        ("Forwarded", "2026-11-27T10:00:00Z"),
        ("Retrieved", "2026-11-27T10:05:00Z"),
    ]


def test_one_report_per_recipient_under_one_transaction_id(app):
    for number in ("15551230001", "15551230002", "15551230003"):
        acknowledged(app, report(Recipient=f"<Recipient><Number>{number}</Number></Recipient>"))
    assert [r["recipient"] for r in reports(app)] == ["15551230001", "15551230002", "15551230003"]


@pytest.mark.parametrize(
    "change",
    [
        {"StatusText": "<StatusText>first</StatusText>"},
        {"Sender": "<Sender><ShortCode>13579</ShortCode></Sender>"},
        {"MMStatusExtension": "<MMStatusExtension>RejectionByOtherRS</MMStatusExtension>"},
        {"UACapabilities": '<UACapabilities UAProf="nokia"/>'},
        {"MM7Version": "<MM7Version>6.5.0</MM7Version>"},
    ],
)
def test_a_report_that_differs_in_any_field_said_is_stored_again(app, change):
    acknowledged(app, report(tx="tx-1"))
    acknowledged(app, report(tx="tx-1", **change))
    assert len(reports(app)) == 2


def test_the_same_report_again_is_a_resend_whatever_its_transaction_id(app):
    acknowledged(app, report(tx="tx-1"))
    acknowledged(app, report(tx="tx-1"))
    acknowledged(app, report(tx="tx-renumbered"))
    [row] = reports(app)
    assert row["transaction_id"] == "tx-1"


def test_read_then_deleted_under_one_transaction_id_are_two_read_replies(app):
    acknowledged(app, read_reply("tx-1", "Read"), "ReadReplyRsp")
    acknowledged(app, read_reply("tx-1", "Deleted"), "ReadReplyRsp")
    acknowledged(app, read_reply("tx-2", "Deleted"), "ReadReplyRsp")
    assert sorted(r["mm_status"] for r in app.store.read_replies()) == ["Deleted", "Read"]


def test_an_mo_that_differs_only_in_priority_is_another_mo(app):
    base = "<LinkedID>mo-1</LinkedID><Sender><Number>15551230001</Number></Sender><Priority>{}</Priority>"
    acknowledged(app, deliver_envelope(base.format("High")), "DeliverRsp")
    acknowledged(app, deliver_envelope(base.format("High"), tx="tx-2"), "DeliverRsp")
    acknowledged(app, deliver_envelope(base.format("Low"), tx="tx-3"), "DeliverRsp")
    assert sorted(m["priority"] for m in app.store.messages()) == ["High", "Low"]


def test_the_database_refuses_a_second_row_that_says_the_same(app):
    acknowledged(app, report())
    [row] = reports(app)
    columns = [c for c in row if c != "id"]
    # SQLite says "UNIQUE constraint failed", PostgreSQL "violates unique constraint".
    with pytest.raises(INTEGRITY_ERRORS, match=r"(?i)unique constraint"):
        app.store.db.execute(
            f"INSERT INTO delivery_reports ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
            [row[c] for c in columns],
        )


@only_sqlite  # PostgreSQL's schema began at SQLite's migration 8: no earlier release to migrate
def test_a_version_4_database_is_migrated_to_the_new_resend_rule(settings):
    """Rows stored under the old indexes get their fingerprints; what those indexes refused
    is stored afterwards, and a resend of an old row is still recognised."""
    with Store(settings) as store:
        db = store.db
        with transaction(db):
            migrate_to(db, 4)
        for table in ("delivery_reports", "read_replies"):
            if "fingerprint" in db[table].columns_dict:  # as a release before migration 5 made it
                db.execute(f"ALTER TABLE {table} DROP COLUMN fingerprint")
        # A report stored by that release: the old indexes would take Retrieved for its resend.
        db.execute(
            "INSERT INTO delivery_reports (received_at, message_id, recipient, recipient_kind, sender, sender_kind,"
            " date_sent, date_utc, mm_status, transaction_id, namespace, mm7_version)"
            " VALUES ('2026-11-27T10:00:01.000000Z', 'msg-1', '15551230001', 'Number', '24680', 'ShortCode',"
            " '2026-11-27T10:00:00Z', '2026-11-27T10:00:00.000000Z', 'Forwarded', 'tx-1', 'REL-6-MM7-1-4', '6.8.0')"
        )
    app = MM7WsgiApp(settings)
    try:
        assert app.store.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        acknowledged(app, report(tx="tx-again", status="Forwarded"))  # a resend of the old row
        acknowledged(app, report(tx="tx-1", status="Retrieved"))  # the old index took it for one
        assert [r["mm_status"] for r in reports(app)] == ["Forwarded", "Retrieved"]
        assert all(r["fingerprint"] for r in reports(app))
    finally:
        app.store.close()


# --- Whole text, never a prefix ----------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("Delivered to <b>handset</b> at 09:15", "Delivered to handset at 09:15"),
        ("a<![CDATA[<&>]]>b", "a<&>b"),
        ("x<!-- a comment -->y", "xy"),
        ("  &#160;padded&#160; \n", "\xa0padded\xa0"),
        ("line 1&#13;\nline 2", "line 1\r\nline 2"),
    ],
)
def test_status_text_is_stored_whole(app, written, stored):
    acknowledged(app, report(StatusText=f"<StatusText>{written}</StatusText>"))
    assert reports(app)[0]["status_text"] == stored


def test_a_message_id_with_markup_is_stored_whole_and_matches_later_reports(app):
    acknowledged(app, report(MessageID="<MessageID>msg-<i>77</i>-x</MessageID>"))
    assert [r["message_id"] for r in app.store.delivery_reports(message_id="msg-77-x")] == ["msg-77-x"]


def test_a_bare_text_address_beside_an_empty_address_element_is_the_address(app):
    acknowledged(app, report(Sender="<Sender>24680<ShortCode/></Sender>"))
    assert (reports(app)[0]["sender"], reports(app)[0]["sender_kind"]) == ("24680", "Number")


def test_a_bare_text_address_with_markup_is_stored_whole(app):
    acknowledged(app, report(Sender="<Sender>2468<b>0</b></Sender>"))
    assert reports(app)[0]["sender"] == "24680"


# --- One request, one value per field ----------------------------------------------------


def test_two_operations_in_one_body_are_refused_and_nothing_is_stored(app):
    one = report(tx="tx-1").decode()
    start, end = one.index("<DeliveryReportReq>"), one.index("</env:Body>")
    two = one[:end] + one[start:end].replace("msg-1", "msg-2") + one[end:]
    error = assert_fault(call(app, two.encode()), "Client", 4004, REL6)
    assert "2 elements" in error.findtext(f"{{{REL6}}}Status/{{{REL6}}}Details")
    assert reports(app) == []


@pytest.mark.parametrize(
    "repeated",
    [
        "<MMStatus>Retrieved</MMStatus><MMStatus>Rejected</MMStatus>",
        "<StatusText>a</StatusText><StatusText>b</StatusText>",
        "<Date>2026-11-27T10:00:00Z</Date><Date>2026-11-27T10:00:01Z</Date>",
    ],
)
def test_one_field_with_two_different_values_is_refused(app, repeated):
    name = repeated[1 : repeated.index(">")]
    body = report(**{name: repeated})
    error = assert_fault(call(app, body), "Client", 4004, REL6)
    assert f"different {name} elements" in error.findtext(f"{{{REL6}}}Status/{{{REL6}}}Details")
    assert reports(app) == []


def test_two_different_recipients_in_one_report_are_refused(app):
    body = report(Recipient="<Recipient><Number>15551230001</Number><Number>15551230002</Number></Recipient>")
    assert_fault(call(app, body), "Client", 4004, REL6)
    assert reports(app) == []


def test_the_same_value_written_twice_is_that_value(app):
    acknowledged(app, report(MMStatus="<MMStatus>Retrieved</MMStatus><MMStatus> Retrieved </MMStatus>"))
    assert reports(app)[0]["mm_status"] == "Retrieved"


def test_an_alias_beside_the_schema_name_stands_aside(app):
    """`TimeStamp` stands in for a missing `Date`; beside a Date it is an unknown element."""
    acknowledged(app, report(Date="<TimeStamp>2026-01-01T00:00:00Z</TimeStamp><Date>2026-11-27T10:00:00Z</Date>"))
    assert reports(app)[0]["date_sent"] == "2026-11-27T10:00:00Z"


def test_every_recipient_list_of_an_mo_is_stored_also_when_written_twice(app):
    children = (
        "<LinkedID>mo-1</LinkedID><Recipients><To><ShortCode>1</ShortCode></To><Number>2</Number>"
        "<Cc><Number>3</Number></Cc><To><ShortCode>4</ShortCode></To></Recipients>"
    )
    acknowledged(app, deliver_envelope(children), "DeliverRsp")
    [message] = app.store.messages()
    # Within a list, addresses are grouped by kind (Number, ShortCode, …), as the schema's type has them.
    assert sorted((r["list"], r["address"]) for r in json.loads(message["recipients"])) == [
        ("Cc", "3"),
        ("To", "1"),
        ("To", "2"),
        ("To", "4"),
    ]


# --- Dates: stored as sent; a UTC value only for a time --------------------------------


@pytest.mark.parametrize(
    ("sent", "utc"),
    [
        ("2026-13-01T00:00:00Z", None),
        ("2026-02-30T00:00:00Z", None),
        ("2026-02-29T00:00:00Z", None),
        ("2024-02-29T00:00:00Z", "2024-02-29T00:00:00.000000Z"),
        ("2026-11-27T25:00:00Z", None),
        ("2026-12-31T23:59:60Z", None),
        ("2026-11-27T10:00:00+25:00", None),
        ("2026-11-27T10:00:00+14:00", "2026-11-26T20:00:00.000000Z"),
        ("2026-11-27T10:00:00+14:01", None),
        ("2026-11-27T24:00:00Z", "2026-11-28T00:00:00.000000Z"),
        ("2026-12-31T24:00:00", "2027-01-01T00:00:00.000000Z"),
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000000Z"),
        ("0001-01-01T00:30:00+01:00", None),
        ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59.000000Z"),
        ("9999-12-31T23:00:00-05:00", None),
        ("9999-12-31T24:00:00Z", None),
        ("0000-01-01T00:00:00Z", None),
        ("10000-01-01T00:00:00Z", None),
    ],
)
def test_calendar_and_range_limits_of_a_report_date(app, sent, utc):
    acknowledged(app, report(Date=f"<Date>{sent}</Date>"))
    row = reports(app)[0]
    assert (row["date_sent"], row["date_utc"]) == (sent, utc)


def test_values_too_long_for_int_are_stored_as_sent_not_a_3000(app):
    """Python's int() refuses more than 4300 digits: a year or a sequence of that length is
    still a request the service understands."""
    date = "2" * 5000 + "-01-01T00:00:00Z"
    acknowledged(app, report(Date=f"<Date>{date}</Date>"))
    assert (reports(app)[0]["date_sent"], reports(app)[0]["date_utc"]) == (date, None)
    sequences = '<UserAgent sequence="²"><Number>1</Number></UserAgent>'
    sequences += f'<UserAgent sequence="{"9" * 5000}"><Number>2</Number></UserAgent>'
    acknowledged(app, deliver_envelope(f"<Previouslysentby>{sequences}</Previouslysentby>"), "DeliverRsp")
    [message] = app.store.messages()
    assert [entry["address"] for entry in json.loads(message["previously_sent_by"])] == ["1", "2"]


def test_the_migration_reads_a_table_a_batch_at_a_time(app):
    from mm7soap.schema import batches

    for number in range(7):
        acknowledged(app, report(tx=f"tx-{number}", MessageID=f"<MessageID>m-{number}</MessageID>"))
    sizes = [len(rows) for rows in batches(app.store.db, "delivery_reports", ("message_id",), size=3)]
    assert sizes == [3, 3, 1]


def test_an_impossible_date_in_every_date_field_is_stored_as_sent(app):
    bad = "2026-02-30T10:00:00Z"
    acknowledged(app, report(UACapabilities=f'<UACapabilities UAProf="p" TimeStamp="{bad}"/>'))
    assert reports(app)[0]["ua_timestamp"] == bad
    reply = read_reply("tx-rr", "Read").replace(b"2026-11-27T10:00:00Z", bad.encode())
    acknowledged(app, reply, "ReadReplyRsp")
    [row] = app.store.read_replies()
    assert (row["time_stamp_sent"], row["time_stamp_utc"]) == (bad, None)
    children = (
        f"<LinkedID>mo-1</LinkedID><TimeStamp>{bad}</TimeStamp>"
        '<Previouslysentdateandtime><DateTime sequence="1">2026-11-27T10:00:00Z</DateTime>'
        f'<DateTime sequence="2">{bad}</DateTime></Previouslysentdateandtime>'
    )
    acknowledged(app, deliver_envelope(children), "DeliverRsp")
    [message] = app.store.messages()
    assert (message["time_stamp_sent"], message["time_stamp_utc"]) == (bad, None)
    assert json.loads(message["previously_sent_date_and_time"]) == [
        {"sequence": 1, "date_sent": "2026-11-27T10:00:00Z", "date_utc": "2026-11-27T10:00:00.000000Z"},
        {"sequence": 2, "date_sent": bad},
    ]


# --- Nothing unclear, nothing refused ------------------------------------------------------


@pytest.mark.parametrize("before", [b"\n", b"\r\n\r\n", b"  \t\n", b"\xef\xbb\xbf\n "])
def test_white_space_before_the_xml_declaration_is_accepted(app, before):
    body = before + b'<?xml version="1.0" encoding="UTF-8"?>\n' + report()
    acknowledged(app, body)
    assert reports(app)[0]["raw_envelope"] == body


def test_xsi_nil_is_absent_not_empty(app):
    xsi = 'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
    acknowledged(
        app,
        report(
            StatusText=f'<StatusText {xsi} xsi:nil="true"/>',
            ApplicID=f'<ApplicID {xsi} xsi:nil="1"></ApplicID>',
            ReplyApplicID="<ReplyApplicID/>",
        ),
    )
    row = reports(app)[0]
    assert (row["status_text"], row["applic_id"], row["reply_applic_id"]) == (None, None, "")


def test_a_nil_mandatory_element_is_missing(app):
    body = report(MMStatus='<MMStatus xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:nil="true"/>')
    error = assert_fault(call(app, body), "Client", 4004, REL6)
    assert "has no MMStatus" in error.findtext(f"{{{REL6}}}Status/{{{REL6}}}Details")
