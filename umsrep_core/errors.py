"""The one error hierarchy of umsrep, shared by every layer.

It lives here, in a module that imports nothing, so that each package may use it: the node
without pulling in torch, the core without pulling in pynetdicom.
"""


class UmsrepError(Exception):
    """Base of every error umsrep raises on purpose. `exit_code` is the CLI's exit status."""

    exit_code = 1


class ConfigError(UmsrepError):
    """A configuration or rules file is missing, malformed or inconsistent."""

    exit_code = 2


class RoutingError(UmsrepError):
    """A study could not be routed."""

    exit_code = 3


class IngestError(UmsrepError):
    """A received dataset cannot be accepted (bad UID, too large, undecodable...)."""

    exit_code = 4


class InferenceError(UmsrepError):
    """A model could not be loaded or run on an image."""

    exit_code = 5


class DeliveryError(UmsrepError):
    """A result or forwarded instance could not be delivered to its destination."""

    exit_code = 6


class StudySkipped(UmsrepError):
    """A study holds nothing the pipeline applies to; it ends skipped, with this reason."""

    exit_code = 7


class TransientError(UmsrepError):
    """A try failed for a reason that may pass (journal locked, disk full, broker away): the
    work is tried again later. `pacs_node.dispatch.is_transient` says which errors are such."""

    exit_code = 8


class ClaimLost(UmsrepError):
    """A try of a job reported on a job that is no longer its own: it was silent so long that
    the node gave the job to another try (`Journal.requeue_silent`). What it did is dropped."""
