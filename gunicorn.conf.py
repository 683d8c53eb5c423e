# gunicorn configuration for mm7soap, read from MM7SOAP_* environment variables:
#   gunicorn -c gunicorn.conf.py mm7soap.wsgi:application
# The same options as `mm7soap serve` (see mm7soap/serving.py).
# A wrong setting stops it at start with one line naming the setting (mm7soap.serving.configured).
from mm7soap.serving import configured, gunicorn_options

globals().update(gunicorn_options(configured()))
