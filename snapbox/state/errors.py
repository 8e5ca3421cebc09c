"""The user-facing error family. It lives at the bottom of the stack so every layer can raise it."""


class SnapboxError(Exception):
    """A failure a user should read: one line, shown as `snapbox: error: ...`."""


class ImageError(SnapboxError):
    """An image that is corrupt, truncated, foreign or newer than this snapbox."""


class IncompatibleHostError(ImageError):
    """The image needs CPU features this host lacks."""


class ImageWriteError(SnapboxError):
    """An image could not be written where it was asked for (a full disk, say)."""


class SaveError(SnapboxError):
    """The object graph holds something that cannot be saved; names the field path."""
