# gunicorn configuration for the reference app (benchmarks/reference_app.py):
#   gunicorn -c benchmarks/reference.conf.py reference_app:application
# mm7soap's production settings (workers, threads, keep-alive, timeout, logging, bind from
# MM7SOAP_* variables), so that the two differ only in the application they serve.
import os

from mm7soap.serving import gunicorn_options
from mm7soap.settings import Settings

# Server hooks (on_starting migrates mm7soap's database) belong to mm7soap, not to the
# reference, which creates its own table on import.
options = {name: value for name, value in gunicorn_options(Settings.from_env()).items() if not callable(value)}
# mm7soap runs a gthread subclass (mm7soap.serving.MM7ThreadWorker) that reads each request in
# the event loop before a thread takes it, so that stalling clients hold no thread, and writes
# gunicorn's error pages as SOAP Faults.  Neither is "how fast Python can go": the reference
# gets gunicorn's plain gthread worker, which hands a thread the connection at once.
options["worker_class"] = "gthread"
# reference_app.py lives beside this file, outside any package.
options["pythonpath"] = os.path.dirname(os.path.abspath(__file__))
# Threads per worker, when the reference should run at its own best rather than at
# mm7soap's setting: one commit per report contends more with more threads.
if os.environ.get("REFERENCE_THREADS"):
    options["threads"] = int(os.environ["REFERENCE_THREADS"])

globals().update(options)
