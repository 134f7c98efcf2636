"""The science of umsrep: imaging, UMS-Rep models, training, evaluation, phantoms.

Imports neither pynetdicom nor Celery. This package file imports nothing, so that the node can
use `umsrep_core.errors` without loading torch.
"""
