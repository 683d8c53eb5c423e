"""A Java client generated from wsdl/ with JAX-WS `wsimport`, as a team replacing a legacy
Java MM7 endpoint generates one first thing, calls every operation on a live server.

Needs a JDK and Debian's `jaxws` (wsimport and the JAX-WS runtime jars); `.ci/run`
installs them and sets MM7SOAP_REQUIRE_JAVA=1, so CI never skips this.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mm7soap.namespaces import MM7_NAMES

ROOT = Path(__file__).parent.parent
JARS = Path("/usr/share/java")
# The JAX-WS 2.3 runtime as Debian packages it (JDK 11+ no longer ships JAX-WS).
RUNTIME = [
    "jaxws-api",
    "jaxws-rt",
    "jaxb-api",
    "jaxb-runtime",
    "jaxb-core",
    "jaxb-impl",
    "javax.activation",
    "saaj-impl",
    "stax-ex",
    "streambuffer",
    "mimepull",
    "gmbal",
    "glassfish-management-api",
    "metro-policy",
    "jws-api",
    "FastInfoset",
]
# What wsimport prints when all is well; anything else is a warning about our WSDL.
WSIMPORT_PROGRESS = {"", "parsing WSDL...", "Generating code...", "Compiling code..."}


def classpath() -> str:
    return os.pathsep.join(str(JARS / f"{name}.jar") for name in RUNTIME)


def missing_tools() -> str | None:
    for tool in ("java", "javac", "wsimport"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian packages: a JDK and jaxws)"
    absent = [name for name in RUNTIME if not (JARS / f"{name}.jar").exists()]
    return f"JAX-WS runtime jars missing: {absent}" if absent else None


@pytest.fixture(scope="module")
def java() -> None:
    reason = missing_tools()
    if reason and os.environ.get("MM7SOAP_REQUIRE_JAVA") == "1":
        pytest.fail(reason)
    if reason:
        pytest.skip(reason)


def wsimport(name: str, into: Path) -> list[str]:
    """Generate the client of one WSDL file; returns what wsimport printed beyond progress."""
    into.mkdir(parents=True)
    command = ["wsimport", "-XadditionalHeaders", "-Xnocompile", "-p", "mm7client", "-s", str(into)]
    done = subprocess.run(
        [*command, str(ROOT / "wsdl" / f"{name}.wsdl")], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return [line for line in (done.stdout + done.stderr).splitlines() if line.strip() not in WSIMPORT_PROGRESS]


@pytest.mark.parametrize("name", MM7_NAMES)
def test_wsimport_generates_a_client_without_warnings(java, tmp_path, name):
    assert wsimport(name, tmp_path / "src") == []
    assert (tmp_path / "src" / "mm7client" / "VASPErrorRsp_Exception.java").exists()


@pytest.mark.parametrize(("name", "version"), [("REL-6-MM7-1-4", "6.8.0"), ("REL-5-MM7-1-0", "5.3.0")])
def test_generated_java_client_calls_every_operation(java, app, live_url, tmp_path, name, version):
    wsimport(name, tmp_path / "src")
    sources = [*(tmp_path / "src" / "mm7client").glob("*.java"), ROOT / "tests" / "java" / "MM7Client.java"]
    compiled = subprocess.run(
        ["javac", "-nowarn", "-cp", classpath(), "-d", str(tmp_path / "classes"), *map(str, sources)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert compiled.returncode == 0, compiled.stderr
    wsdl_url = (ROOT / "wsdl" / f"{name}.wsdl").as_uri()
    run = subprocess.run(
        ["java", "-cp", f"{tmp_path / 'classes'}{os.pathsep}{classpath()}", "MM7Client", wsdl_url, live_url, version],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines() == [
        "DeliveryReport 1000 java-DeliveryReport",
        "ReadReply 1000 java-ReadReply",
        "Deliver 1000 java-Deliver",
        "fault 4004",  # the typed VASPErrorRsp fault, read by JAX-WS
    ]
    [report] = app.store.delivery_reports()
    assert (report["message_id"], report["mm_status"], report["namespace"]) == ("java-message-1", "Retrieved", name)
    assert [r["mm_status"] for r in app.store.read_replies()] == ["Read"]
    [message] = app.store.messages()
    assert (message["linked_id"], message["subject"]) == ("java-mo-1", "from Java")
