"""The database schema: one table per MM7 request stored, and the migrations that build it.

Each migration runs once, in order, and `PRAGMA user_version` counts those applied; a
released migration is never edited, only followed by a new one.  Times are UTC text of a
fixed width, so that text order is time order (`--since`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import sqlite_utils

from mm7soap.resend import message_fingerprint, report_fingerprint, said_columns

REPORTS = "delivery_reports"
READ_REPLIES = "read_replies"
MESSAGES = "messages"
PARTS = "message_parts"
OUTBOX = "outbox"


def address_columns(prefix: str) -> dict[str, type]:
    """An MM7 address: its value, its kind (Number, ShortCode, RFC2822Address), its attributes."""
    return {
        prefix: str,
        f"{prefix}_kind": str,
        f"{prefix}_display_only": int,
        f"{prefix}_address_coding": str,
        f"{prefix}_address_id": str,
    }


# Where a request came from and how it was written; the last columns of every table.
ORIGIN_COLUMNS: dict[str, type] = {
    "transaction_id": str,
    "namespace": str,  # e.g. REL-6-MM7-1-4
    "mm7_version": str,
    "operator_id": str,  # X-Mblox-Carrier-Id / x-mblox-operator-id, leading zeros kept
    "client_address": str,
    "raw_envelope": bytes,  # the SOAP part exactly as received
}

APPLICATION_COLUMNS: dict[str, type] = {"applic_id": str, "reply_applic_id": str, "aux_applic_info": str}

# Columns of a stored delivery report, in the order a person reads them.
REPORT_COLUMNS: dict[str, type] = {
    "id": int,
    "received_at": str,  # UTC, ISO 8601, when we committed it
    "message_id": str,
    **address_columns("recipient"),
    **address_columns("sender"),
    "date_sent": str,  # Date (or TimeStamp) exactly as sent
    "date_utc": str,  # the same, normalised to UTC; NULL when it was not an xs:dateTime
    "mm_status": str,  # exactly as sent, 3GPP value or not
    "mm_status_extension": str,
    "status_text": str,
    "mms_relay_server_id": str,
    **APPLICATION_COLUMNS,
    "ua_prof": str,
    "ua_timestamp": str,
    **ORIGIN_COLUMNS,
    "fingerprint": str,  # sha256 of what the report says (mm7soap.resend), for recognising a resend
}

READ_REPLY_COLUMNS: dict[str, type] = {
    "id": int,
    "received_at": str,
    "message_id": str,
    **address_columns("recipient"),  # the party that read the MM
    **address_columns("sender"),
    "time_stamp_sent": str,  # TimeStamp exactly as sent
    "time_stamp_utc": str,
    "mm_status": str,  # Read, Deleted, Indeterminate, or as sent
    "status_text": str,
    "mms_relay_server_id": str,
    **APPLICATION_COLUMNS,
    **ORIGIN_COLUMNS,
    "fingerprint": str,
}

# A mobile-originated MM (DeliverReq); its files are rows of PART_COLUMNS.
MESSAGE_COLUMNS: dict[str, type] = {
    "id": int,
    "received_at": str,
    "linked_id": str,  # the MMSC's id of this MO (Sinch: always sent)
    **address_columns("sender"),
    "recipients": str,  # JSON: [{"list": "To", "kind": "ShortCode", "address": "24680", …}]
    "subject": str,
    "priority": str,
    "time_stamp_sent": str,
    "time_stamp_utc": str,
    "vasp_id": str,
    "vas_id": str,
    "mms_relay_server_id": str,
    "sender_spi": str,
    "recipient_spi": str,
    "reply_charging_id": str,
    **APPLICATION_COLUMNS,
    "previously_sent_by": str,  # JSON
    "previously_sent_date_and_time": str,  # JSON
    "ua_prof": str,
    "ua_timestamp": str,
    "content_href": str,  # as sent
    "allow_adaptations": int,
    "content_found_by": str,  # href, all-parts or none (mm7soap.content)
    "part_count": int,
    "content_bytes": int,
    "fingerprint": str,  # sha256 of what makes this MO itself, for recognising a resend
    **ORIGIN_COLUMNS,
}

PART_COLUMNS: dict[str, type] = {
    "id": int,
    "message": int,  # messages.id
    "position": int,  # 1, 2, … in MIME order
    "content_type": str,  # media type, lower-cased
    "charset": str,
    "content_id": str,  # without <>
    "content_location": str,
    "filename": str,
    "size": int,
    "sha256": str,
    "data": bytes,  # decoded (base64, quoted-printable), byte-exact
}


def migrate_1_delivery_reports(db: sqlite_utils.Database) -> None:
    db[REPORTS].create(REPORT_COLUMNS, pk="id", not_null={"received_at", "message_id", "mm_status"})
    db[REPORTS].create_index(["message_id"], index_name="delivery_reports_message_id")
    # The two ways a resend is recognised (issue 2): same TransactionID and MessageID, or
    # the same MessageID, Recipient, MMStatus and Date.  A report without TransactionID
    # (NULL) never collides on the first.
    db[REPORTS].create_index(
        ["transaction_id", "message_id"], index_name="delivery_reports_resend_by_transaction", unique=True
    )
    db.execute(
        "CREATE UNIQUE INDEX delivery_reports_resend_by_content ON delivery_reports"
        " (message_id, recipient, mm_status, ifnull(date_sent, ''))"
    )


def migrate_2_health(db: sqlite_utils.Database) -> None:
    # One row, rewritten by every health check: a real durable write, so a read-only
    # file, a full disk or a held lock shows up in /health as it would for a report.
    db.execute("CREATE TABLE health (id INTEGER PRIMARY KEY CHECK (id = 1), checked_at TEXT NOT NULL)")


def migrate_3_read_replies(db: sqlite_utils.Database) -> None:
    # Resends are recognised exactly as for delivery reports, TimeStamp standing for Date.
    db[READ_REPLIES].create(READ_REPLY_COLUMNS, pk="id", not_null={"received_at", "message_id", "mm_status"})
    db[READ_REPLIES].create_index(["message_id"], index_name="read_replies_message_id")
    db[READ_REPLIES].create_index(
        ["transaction_id", "message_id"], index_name="read_replies_resend_by_transaction", unique=True
    )
    db.execute(
        "CREATE UNIQUE INDEX read_replies_resend_by_content ON read_replies"
        " (message_id, recipient, mm_status, ifnull(time_stamp_sent, ''))"
    )


def migrate_4_messages(db: sqlite_utils.Database) -> None:
    db[MESSAGES].create(MESSAGE_COLUMNS, pk="id", not_null={"received_at", "fingerprint"})
    db[MESSAGES].create_index(["received_at"], index_name="messages_received_at")
    db[MESSAGES].create_index(["sender"], index_name="messages_sender")
    # A resend is the same MO again: the same TransactionID and content, or, when the MO
    # names itself (LinkedID or TimeStamp), the same content under a new TransactionID.
    db[MESSAGES].create_index(
        ["transaction_id", "fingerprint"], index_name="messages_resend_by_transaction", unique=True
    )
    db.execute(
        "CREATE UNIQUE INDEX messages_resend_by_content ON messages (fingerprint)"
        " WHERE linked_id IS NOT NULL OR time_stamp_sent IS NOT NULL"
    )
    db[PARTS].create(
        PART_COLUMNS,
        pk="id",
        foreign_keys=[("message", MESSAGES, "id")],
        not_null={"message", "position", "content_type", "size", "sha256", "data"},
    )
    db[PARTS].create_index(["message", "position"], index_name="message_parts_position", unique=True)


def migrate_5_resend_is_the_same_content(db: sqlite_utils.Database) -> None:
    # A resend is a request that says the same as a stored one (mm7soap.resend).  The indexes
    # of migrations 1 and 3 took a report with the TransactionID and MessageID of a stored one
    # (`Retrieved` after `Forwarded`, another recipient) for a resend, and it was lost (issue 17).
    for table, columns in ((REPORTS, REPORT_COLUMNS), (READ_REPLIES, READ_REPLY_COLUMNS)):
        db.execute(f"DROP INDEX IF EXISTS {table}_resend_by_transaction")
        db.execute(f"DROP INDEX IF EXISTS {table}_resend_by_content")
        if "fingerprint" not in db[table].columns_dict:
            db.execute(f"ALTER TABLE {table} ADD COLUMN fingerprint TEXT")
        for rows in batches(db, table, said_columns(columns)):
            updates = [(report_fingerprint(row, columns), row["id"]) for row in rows]
            db.conn.executemany(f"UPDATE {table} SET fingerprint = ? WHERE id = ?", updates)
        db.execute(f"CREATE UNIQUE INDEX {table}_resend ON {table} (fingerprint)")
    # An MO's fingerprint now covers all it says, not only who, to whom, when and what.
    labels = ", ".join(said_columns(PART_COLUMNS, frozenset({"data"})))
    for rows in batches(db, MESSAGES, said_columns(MESSAGE_COLUMNS)):
        for row in rows:
            parts = list(db.query(f"SELECT {labels} FROM {PARTS} WHERE message = ? ORDER BY position", [row["id"]]))
            fingerprint = message_fingerprint(row, MESSAGE_COLUMNS, parts, PART_COLUMNS)
            db.execute(f"UPDATE {MESSAGES} SET fingerprint = ? WHERE id = ?", [fingerprint, row["id"]])


def batches(db: sqlite_utils.Database, table: str, columns: tuple[str, ...], size: int = 2000) -> Iterator[list[dict]]:
    """A table's rows in id order, `size` at a time: a migration of millions of rows holds
    one batch in memory, not the table."""
    last = 0
    while True:
        rows = list(
            db.query(f"SELECT id, {', '.join(columns)} FROM {table} WHERE id > ? ORDER BY id LIMIT ?", [last, size])
        )
        if not rows:
            return
        yield rows
        last = rows[-1]["id"]


def migrate_6_outbox(db: sqlite_utils.Database) -> None:
    # One event per stored request, written in the transaction that stores it (issue 18).
    # `sequence` is the order of commits: SQLite has one writer at a time, so a sequence is
    # never committed after a higher one, and `/events?after=` never skips an event.
    db.execute(
        f"CREATE TABLE {OUTBOX} ("
        " sequence INTEGER PRIMARY KEY AUTOINCREMENT,"
        " event_id TEXT NOT NULL UNIQUE,"  # webhook-id: the same on every delivery of the event
        " type TEXT NOT NULL,"  # delivery_report, read_reply, message
        " source_id INTEGER NOT NULL,"  # the row's id in the type's table
        " order_key TEXT,"  # MessageID: its events are delivered one after another, in order
        " created_at TEXT NOT NULL,"  # the commit time, as received_at
        " state TEXT NOT NULL DEFAULT 'pending',"  # pending, delivered, failed
        " attempts INTEGER NOT NULL DEFAULT 0,"
        " next_attempt_at TEXT NOT NULL,"
        " lease_until TEXT,"  # a forwarder is delivering it until then
        " last_attempt_at TEXT, last_status INTEGER, last_error TEXT, delivered_at TEXT)"
    )
    db.execute(f"CREATE INDEX outbox_pending ON {OUTBOX} (sequence) WHERE state = 'pending'")
    db.execute(f"CREATE INDEX outbox_pending_order ON {OUTBOX} (order_key, sequence) WHERE state = 'pending'")
    db.execute(f"CREATE INDEX outbox_state_created ON {OUTBOX} (state, created_at)")


def migrate_7_stats_and_retention(db: sqlite_utils.Database) -> None:
    # `mm7soap stats` (issue 19) takes each MMS (MessageID and recipient) with the times of its
    # reports from this index alone, in its order, without sorting a million rows.  It begins
    # with message_id, so it serves every lookup by MessageID that migration 1's index did;
    # that one is dropped, and the intake writes no more indexes for it than before.
    db.execute(f"DROP INDEX IF EXISTS {REPORTS}_message_id")
    db.execute(f"CREATE INDEX {REPORTS}_message ON {REPORTS} (message_id, recipient, received_at, date_utc)")
    # A time window (`stats --since`, `reports --since`): the MessageIDs of its reports from the
    # index alone, not a scan of every report.
    db.execute(f"CREATE INDEX {REPORTS}_received_at ON {REPORTS} (received_at, message_id)")
    db.execute(f"CREATE INDEX {READ_REPLIES}_received_at ON {READ_REPLIES} (received_at)")
    # Retention (mm7soap.retention) never deletes a row whose event is not delivered: that event
    # is found from the row.  Only undelivered events are in it, so it stays small.
    db.execute(f"CREATE INDEX {OUTBOX}_undelivered ON {OUTBOX} (type, source_id) WHERE state != 'delivered'")


def migrate_8_outbox_due(db: sqlite_utils.Database) -> None:
    # The claim reads only the events that are due (mm7soap.outbox.CLAIM_SQL), not every pending one.
    db.execute(f"CREATE INDEX outbox_due ON {OUTBOX} (next_attempt_at, sequence) WHERE state = 'pending'")


def migrate_9_outbox_pending_order_by_due_time(db: Any) -> None:
    # A new event is due no earlier than the latest due time of its MessageID's pending events
    # (mm7soap.outbox.RECORD_SQL): in (order_key, next_attempt_at) order that is one step down
    # the index, not a read of all of them (a MessageID sent to many recipients has an event
    # for each report).  The claim's "no earlier pending event of its MessageID" and a failed
    # delivery's successors are found in it too.  The same statements on either engine: it is
    # PostgreSQL's migration 2 as well (mm7soap.postgres_schema says what it means there).
    db.execute("DROP INDEX IF EXISTS outbox_pending_order")
    db.execute(f"CREATE INDEX outbox_pending_order ON {OUTBOX} (order_key, next_attempt_at) WHERE state = 'pending'")


MIGRATIONS: tuple[Callable[[sqlite_utils.Database], None], ...] = (
    migrate_1_delivery_reports,
    migrate_2_health,
    migrate_3_read_replies,
    migrate_4_messages,
    migrate_5_resend_is_the_same_content,
    migrate_6_outbox,
    migrate_7_stats_and_retention,
    migrate_8_outbox_due,
    migrate_9_outbox_pending_order_by_due_time,
)
