# gunicorn configuration for mm7soap, read from MM7SOAP_* environment variables:
#   gunicorn -c gunicorn.conf.py mm7soap.wsgi:application
# The same options as `mm7soap serve` (see mm7soap/serving.py).
from mm7soap.serving import gunicorn_options
from mm7soap.settings import Settings

globals().update(gunicorn_options(Settings.from_env()))
