"""mm7soap.compat: Spyne imports on every supported Python, through the shim."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import mm7soap  # installs the shim before anything imports Spyne
import six.moves
from spyne.util.six.moves import collections_abc
from spyne.protocol.soap import Soap11
from spyne.util import six as spyne_six
assert sys.modules["spyne.util.six.moves"] is six.moves, "moves must come from PyPI's six"
assert hasattr(spyne_six, "get_function_name"), "spyne.util.six must stay Spyne's"
assert collections_abc.MutableSet
print("ok", sys.version_info[:2])
"""


def test_spyne_imports_through_the_shim_in_a_fresh_interpreter():
    result = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning:mm7soap", "-c", CHECK],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


def test_the_shim_is_installed_once():
    from mm7soap import compat

    compat.install()
    compat.install()
    assert sum(isinstance(f, compat.SixAlias) for f in sys.meta_path) == 1
