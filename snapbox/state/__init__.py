"""Savable kernel objects, the object-graph codec, and the image file format."""

from snapbox.state.errors import ImageError, ImageWriteError, IncompatibleHostError, SaveError, SnapboxError
from snapbox.state.savable import (
    decode_graph,
    encode_graph,
    encode_graph_with_stats,
    nosave,
    registered_types,
    savable,
)

__all__ = [
    "ImageError",
    "IncompatibleHostError",
    "SaveError",
    "ImageWriteError",
    "SnapboxError",
    "decode_graph",
    "encode_graph",
    "encode_graph_with_stats",
    "nosave",
    "registered_types",
    "savable",
]
