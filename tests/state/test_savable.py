"""The savable registry and graph codec: identity, cycles, values, errors."""

from __future__ import annotations

import enum
import os
import socket
from dataclasses import dataclass, field

import pytest

from snapbox.state import ImageError, SaveError, decode_graph, encode_graph, nosave, savable


@savable(name="test.Node")
@dataclass(eq=False)
class Node:
    value: object = None
    next: "Node | None" = None
    children: list = field(default_factory=list)
    cache: dict = nosave(dict)
    loaded: bool = nosave(default=False)

    def after_load(self, ctx) -> None:
        self.loaded = True


@savable(name="test.Color")
class Color(enum.Enum):
    RED = 1
    BLUE = 2


def roundtrip(obj, ctx=None):
    return decode_graph(encode_graph(obj), ctx)


def test_shared_references_stay_shared():
    shared = Node(value="shared")
    root = Node(children=[shared, shared], next=shared)
    out = roundtrip(root)
    assert out.children[0] is out.children[1] is out.next
    assert out.next.value == "shared"


def test_cycles_survive():
    a = Node(value=1)
    b = Node(value=2, next=a)
    a.next = b
    out = roundtrip(a)
    assert out.next.next is out
    assert out.next.value == 2


def test_values_of_every_kind():
    values = {
        "int": 12345678901234567890123456789,
        "neg": -(1 << 70),
        "float": 1.5,
        "str": "héllo",
        "not-utf8": os.fsdecode(b"/tmp/d\xff\xfe"),  # a file name as os.fsdecode gives it
        "bytes": b"\x00\xff",
        "bytearray": bytearray(b"abc"),
        "tuple": (1, (2, 3)),
        "set": {3, 1, 2},
        "frozenset": frozenset({"a"}),
        "objkeys": {(1, 2): "tuple key", 7: [1, 2]},
        "enum": Color.BLUE,
        "none": None,
        "bool": True,
    }
    out = roundtrip(Node(value=values)).value
    assert out == values
    assert type(out["tuple"]) is tuple and type(out["bytearray"]) is bytearray
    assert type(out["frozenset"]) is frozenset and out["enum"] is Color.BLUE
    assert os.fsencode(out["not-utf8"]) == b"/tmp/d\xff\xfe"


def test_nosave_fields_are_rebuilt_and_after_load_runs():
    n = Node(value=1)
    n.cache["x"] = 1
    out = roundtrip(n)
    assert out.cache == {} and out.loaded


def test_encoding_is_deterministic():
    def build():
        shared = Node(value={"b": 2, "a": 1})
        return Node(value={5, 3, 9}, children=[shared, Node(next=shared)])

    assert encode_graph(build()) == encode_graph(build())


def test_type_names_are_written_once():
    root = Node(children=[Node(value=i) for i in range(100)])
    blob = encode_graph(root)
    assert blob.count(b"test.Node") == 1


def test_unsavable_value_names_its_field_path():
    root = Node(children=[Node(), Node(value=socket.socket())])
    with pytest.raises(SaveError, match=r"Node\.children\[1\]\.value: socket is not a savable type"):
        encode_graph(root)
    root.children[1].value.close()


def test_corrupt_graph_is_an_image_error():
    blob = bytearray(encode_graph(Node(value="x" * 50)))
    with pytest.raises(ImageError):
        decode_graph(bytes(blob[: len(blob) // 2]))
    with pytest.raises(ImageError):
        decode_graph(b"\xff\xff\xff")


def test_newer_type_version_is_refused():
    blob = encode_graph(Node(value=1)).replace(b"test.Node\x01", b"test.Node\x09")
    with pytest.raises(ImageError, match="newer"):
        decode_graph(blob)


ORDER: list[str] = []


@savable(name="test.Dep")
@dataclass(eq=False)
class Dep:
    name: str = ""
    needs: "Dep | None" = None
    other: "Dep | None" = None

    load_after = ("needs",)

    def after_load(self, ctx) -> None:
        ORDER.append(self.name)


def test_after_load_runs_declared_dependencies_first():
    # Discovery order is root, a, b; without declarations hooks would run b, a, root.
    b = Dep("b")
    a = Dep("a", needs=None, other=b)
    root = Dep("root", needs=None, other=a)
    b.needs = root  # b declares it must load after root, though root is discovered first
    ORDER.clear()
    decode_graph(encode_graph(root))
    assert ORDER == ["root", "b", "a"]


def test_after_load_dependency_cycles_are_reported():
    a = Dep("a")
    b = Dep("b", needs=a)
    a.needs = b
    with pytest.raises(ImageError, match="after_load dependency cycle Dep -> Dep -> Dep"):
        decode_graph(encode_graph(a))
