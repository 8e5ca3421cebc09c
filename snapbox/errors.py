"""The SnapboxError family, gathered for users of the Python API."""

from snapbox.state.errors import ImageError, IncompatibleHostError, SaveError, SnapboxError


class ContainerStateError(SnapboxError):
    """An operation the container's status does not allow, e.g. pausing a stopped one."""


class BundleError(SnapboxError):
    """An OCI bundle that cannot be used."""


class Cancelled(SnapboxError):
    """An operation interrupted by its caller (^C) and undone: nothing changed."""


__all__ = ["BundleError", "Cancelled", "ContainerStateError", "ImageError", "IncompatibleHostError", "SaveError",
           "SnapboxError"]
