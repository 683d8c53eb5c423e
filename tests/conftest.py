from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from mm7soap.settings import Settings
from mm7soap.transport import MM7WsgiApp


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(database=str(tmp_path / "mm7soap.db"), busy_timeout_ms=200)


@pytest.fixture
def make_app(settings: Settings) -> Iterator[Callable[..., MM7WsgiApp]]:
    """Builds apps on the test's database with some settings changed; closes them after."""
    made: list[MM7WsgiApp] = []

    def make(**changes: object) -> MM7WsgiApp:
        made.append(MM7WsgiApp(replace(settings, **changes)))
        return made[-1]

    yield make
    for application in made:
        application.store.close()


@pytest.fixture
def app(make_app: Callable[..., MM7WsgiApp]) -> MM7WsgiApp:
    return make_app()
