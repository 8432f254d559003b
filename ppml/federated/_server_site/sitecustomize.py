"""Put on the server side's PYTHONPATH by ppml.federated.deployment when an open-file audit is requested."""

from ppml.federated.audit_open import install

install()
