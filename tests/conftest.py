from __future__ import annotations

from pathlib import Path

import pytest

from mm7soap.settings import Settings
from mm7soap.transport import MM7WsgiApp


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(database=str(tmp_path / "mm7soap.db"), busy_timeout_ms=200)


@pytest.fixture
def app(settings: Settings) -> MM7WsgiApp:
    application = MM7WsgiApp(settings)
    yield application
    application.store.close()
