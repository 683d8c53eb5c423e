"""Spyne 2.14 on Python 3.12 and 3.13, without patching site-packages.

Spyne 2.14.0 (its last release) vendors an old `six` whose `moves` importer lacks
`find_spec`/`exec_module`; Python 3.12 dropped the fallback, so `spyne.util.six.moves`
cannot be imported ("No module named 'spyne.util.six.moves'").  Upstream fixed this on
master but never released it.  This module makes `spyne.util.six.moves` (and everything
below it) the `six.moves` of the `six` package from PyPI, which speaks the modern import
protocol; `spyne.util.six` itself stays Spyne's, which adds functions of its own.  It is
imported by `mm7soap/__init__.py`, so before Spyne, on every Python version alike.

Python 3.13 also removed `cgi`, which Spyne imports; the `legacy-cgi` package (installed on
3.13 by an environment marker in setup.cfg) puts it back.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

VENDORED = "spyne.util.six.moves"


class SixAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves `spyne.util.six.moves[.X]` to `six.moves[.X]`."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == VENDORED or fullname.startswith(VENDORED + "."):
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module("six.moves" + spec.name[len(VENDORED) :])

    def exec_module(self, module: ModuleType) -> None:
        """The module is `six`'s, already executed."""


def install() -> None:
    if not any(isinstance(finder, SixAlias) for finder in sys.meta_path):
        sys.meta_path.insert(0, SixAlias())


install()
