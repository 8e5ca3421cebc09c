"""The SnapboxError family, gathered for users of the Python API."""

from snapbox.state.errors import ImageError, IncompatibleHostError, SaveError, SnapboxError


class ContainerStateError(SnapboxError):
    """An operation the container's status does not allow, e.g. pausing a stopped one."""


class BundleError(SnapboxError):
    """An OCI bundle that cannot be used."""


__all__ = ["BundleError", "ContainerStateError", "ImageError", "IncompatibleHostError", "SaveError",
           "SnapboxError"]
