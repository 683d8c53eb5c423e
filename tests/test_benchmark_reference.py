"""The benchmark's yardstick (benchmarks/reference_app.py) does the work it is compared on:
it answers 1000 only after committing the report's row, with mm7soap's durability."""

from __future__ import annotations

import importlib.util
import sqlite3
from contextlib import closing
from pathlib import Path

from tests.helpers import SINCH_CONTENT_TYPE, call, data

ROOT = Path(__file__).parent.parent


def test_reference_app_stores_then_answers_1000(tmp_path, monkeypatch):
    database = tmp_path / "reference.db"
    monkeypatch.setenv("REFERENCE_DATABASE", str(database))
    spec = importlib.util.spec_from_file_location("reference_app", ROOT / "benchmarks" / "reference_app.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    response = call(reference.application, data("sinch_delivery_report.xml"), content_type=SINCH_CONTENT_TYPE)
    assert response.status == 200
    assert response.text("Body/DeliveryReportRsp/Status/StatusCode") == "1000"
    assert response.text("Header/TransactionID") == "tx-20261127-0042"
    with closing(sqlite3.connect(database)) as conn:
        assert conn.execute("SELECT message_id, mm_status FROM delivery_reports").fetchall() == [
            ("481516234200000001", "Retrieved")
        ]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    reference.connection().close()
