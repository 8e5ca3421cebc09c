"""The savable registry and the object-graph codec.

A savable type is a dataclass registered under a stable name. `encode_graph` walks the
graph from a root object, gives every savable object one id, and writes references as ids,
so shared objects stay shared and cycles survive. Type and field names are written once per
graph, not once per object. `decode_graph` rebuilds the graph, fills `nosave` fields from
their defaults, then runs every `after_load` hook.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

import cbor2

from snapbox.state.errors import ImageError, SaveError

# CBOR tags private to this codec (the range 4000-4099 is unassigned by IANA).
TAG_REF = 4000
TAG_TUPLE = 4001
TAG_SET = 4002
TAG_DICT = 4003
TAG_BYTEARRAY = 4004
TAG_ENUM = 4005
TAG_FROZENSET = 4006
# A str holding bytes that are not UTF-8, as os.fsdecode gives them (PEP 383 surrogates:
# file names are bytes on Linux); saved as those bytes.
TAG_FSSTR = 4007

GRAPH_VERSION = 1


@dataclasses.dataclass(frozen=True)
class TypeInfo:
    """What the registry knows of one savable type."""

    name: str  # stable name written in images; never derived from the module path
    version: int  # schema version; an image with a newer one is refused
    cls: type
    saved_fields: tuple[str, ...]  # fields written to images, in declaration order
    nosave_fields: tuple[dataclasses.Field, ...]  # rebuilt from their defaults on load


_by_name: dict[str, TypeInfo] = {}
_by_class: dict[type, TypeInfo] = {}
_enums_by_name: dict[str, type[enum.Enum]] = {}


def nosave(factory: Callable[[], Any] | None = None, default: Any = None) -> Any:
    """A dataclass field that is never saved and is rebuilt (from `factory`) on load."""
    meta = {"nosave": True}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta, repr=False, compare=False)
    return dataclasses.field(default=default, metadata=meta, repr=False, compare=False)


def savable(cls: type | None = None, *, name: str | None = None, version: int = 1):
    """Register a dataclass (or an Enum) under a stable type name.

    Use as `@savable` or `@savable(name="Pipe", version=2)`. The name defaults to the
    class name and must be unique across snapbox. Hooks a class may define:
    `before_save()`, run as the encoder reaches the object; `after_load(ctx)`, run once the
    whole graph is decoded; and `load_after = ("field", ...)`, naming fields whose objects'
    after_load must run before this one's.
    """

    def register(c: type) -> type:
        type_name = name or c.__name__
        if isinstance(c, type) and issubclass(c, enum.Enum):
            if type_name in _enums_by_name and _enums_by_name[type_name] is not c:
                raise TypeError(f"savable enum name {type_name!r} registered twice")
            _enums_by_name[type_name] = c
            c._savable_name = type_name
            return c
        if not dataclasses.is_dataclass(c):
            raise TypeError(f"@savable needs a dataclass, not {c.__name__}")
        if type_name in _by_name and _by_name[type_name].cls is not c:
            raise TypeError(f"savable type name {type_name!r} registered twice")
        fields = dataclasses.fields(c)
        info = TypeInfo(
            name=type_name,
            version=version,
            cls=c,
            saved_fields=tuple(f.name for f in fields if not f.metadata.get("nosave")),
            nosave_fields=tuple(f for f in fields if f.metadata.get("nosave")),
        )
        _by_name[type_name] = info
        _by_class[c] = info
        return c

    if cls is not None:
        return register(cls)
    return register


def registered_types() -> dict[str, type]:
    """Every registered savable type (dataclasses and enums) by its stable name."""
    out: dict[str, type] = {n: i.cls for n, i in _by_name.items()}
    out.update(_enums_by_name)
    return out


class _Encoder:
    def __init__(self) -> None:
        self.ids: dict[int, int] = {}  # id(obj) -> object index
        self.objects: list[Any] = []
        self.paths: list[str] = []  # the first field path that reached each object
        self.type_index: dict[str, int] = {}
        self.types: list[list] = []

    def ref(self, obj: Any, path: str) -> cbor2.CBORTag:
        key = id(obj)
        index = self.ids.get(key)
        if index is None:
            index = len(self.objects)
            self.ids[key] = index
            self.objects.append(obj)
            self.paths.append(path)
        return cbor2.CBORTag(TAG_REF, index)

    def type_of(self, info: TypeInfo) -> int:
        index = self.type_index.get(info.name)
        if index is None:
            index = len(self.types)
            self.type_index[info.name] = index
            self.types.append([info.name, info.version, list(info.saved_fields)])
        return index

    def value(self, v: Any, path: str) -> Any:
        if v is None or isinstance(v, (bool, int, float, str, bytes)):
            if isinstance(v, enum.Enum):
                return self.enum(v, path)
            if type(v) is str and not v.isascii():
                try:
                    v.encode()
                except UnicodeEncodeError:
                    return cbor2.CBORTag(TAG_FSSTR, os.fsencode(v))
            return v
        cls = type(v)
        if cls in _by_class:
            return self.ref(v, path)
        if isinstance(v, enum.Enum):
            return self.enum(v, path)
        if cls is list:
            return [self.value(x, f"{path}[{i}]") for i, x in enumerate(v)]
        if cls is tuple:
            return cbor2.CBORTag(TAG_TUPLE, [self.value(x, f"{path}[{i}]") for i, x in enumerate(v)])
        if cls is dict:
            return cbor2.CBORTag(
                TAG_DICT,
                [[self.value(k, f"{path}.key"), self.value(x, f"{path}[{k!r}]")] for k, x in v.items()],
            )
        if cls in (set, frozenset):
            items = [self.value(x, f"{path}{{}}") for x in v]
            items.sort(key=cbor2.dumps)  # deterministic: a set has no order of its own
            return cbor2.CBORTag(TAG_SET if cls is set else TAG_FROZENSET, items)
        if cls is bytearray:
            return cbor2.CBORTag(TAG_BYTEARRAY, bytes(v))
        if cls is memoryview:
            return bytes(v)
        raise SaveError(f"cannot save {path}: {cls.__qualname__} is not a savable type")

    def enum(self, v: enum.Enum, path: str) -> cbor2.CBORTag:
        name = getattr(type(v), "_savable_name", None)
        if name is None or _enums_by_name.get(name) is not type(v):
            raise SaveError(f"cannot save {path}: enum {type(v).__qualname__} is not registered")
        return cbor2.CBORTag(TAG_ENUM, [name, v.value])

    def encode(self, root: Any) -> tuple[bytes, dict[str, list[int]]]:
        if type(root) not in _by_class:
            raise SaveError(f"cannot save {type(root).__qualname__}: not a savable type")
        self.ref(root, _by_class[type(root)].name)
        rows = []
        stats: dict[str, list[int]] = {}
        i = 0
        while i < len(self.objects):
            obj = self.objects[i]
            info = _by_class[type(obj)]
            before = getattr(obj, "before_save", None)
            if before is not None:
                before()
            base = self.paths[i]
            values = [self.value(getattr(obj, f), f"{base}.{f}") for f in info.saved_fields]
            row = cbor2.dumps([self.type_of(info), values])
            rows.append(row)
            entry = stats.setdefault(info.name, [0, 0])
            entry[0] += 1
            entry[1] += len(row)
            i += 1
        # {"version": V, "types": [...], "objects": [row, ...]}, with the rows encoded one by
        # one above so that each type's share of the bytes is known exactly.
        blob = b"".join([
            _cbor_head(5, 3),
            cbor2.dumps("version"), cbor2.dumps(GRAPH_VERSION),
            cbor2.dumps("types"), cbor2.dumps(self.types),
            cbor2.dumps("objects"), _cbor_head(4, len(rows)), *rows,
        ])
        return blob, stats


def _cbor_head(major: int, n: int) -> bytes:
    """The initial bytes of a CBOR item of major type `major` and length `n`."""
    if n < 24:
        return bytes([major << 5 | n])
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | extra]) + n.to_bytes(size, "big")
    raise ValueError("CBOR length too large")


def encode_graph(root: Any) -> bytes:
    """Serialize the object graph reachable from `root` to deterministic CBOR bytes.

    Raises SaveError naming the field path of the first value that cannot be saved.
    """
    return _Encoder().encode(root)[0]


def encode_graph_with_stats(root: Any) -> tuple[bytes, dict[str, list[int]]]:
    """encode_graph, plus {type name: [objects, bytes]} (like gVisor's state.Stats)."""
    return _Encoder().encode(root)


class _Decoder:
    def __init__(self, graph: Any) -> None:
        if not isinstance(graph, dict) or graph.get("version") != GRAPH_VERSION:
            raise ImageError("image kernel graph has an unknown layout version")
        self.graph = graph
        self.infos: list[tuple[TypeInfo, list[str], list[tuple]]] = []
        self.objects: list[Any] = []

    def types(self) -> None:
        types = self.graph.get("types")
        if not isinstance(types, list):
            raise ImageError("image kernel graph has no type table")
        for entry in types:
            if not (isinstance(entry, list) and len(entry) == 3):
                raise ImageError("image kernel graph has a malformed type table")
            name, version, fields = entry
            info = _by_name.get(name) if isinstance(name, str) else None
            if info is None:
                raise ImageError(f"image holds an object of unknown type {name!r}")
            if not isinstance(version, int) or version > info.version:
                raise ImageError(
                    f"image holds {name} version {version}, newer than this snapbox's {info.version}"
                )
            if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
                raise ImageError(f"image type table entry for {name} is malformed")
            unknown = set(fields) - set(info.saved_fields)
            if unknown:
                raise ImageError(f"image holds {name} fields this snapbox does not know: {sorted(unknown)}")
            self.infos.append((info, fields, _plan(info, fields)))

    def value(self, v: Any) -> Any:
        # cbor2 hands back arrays inside tags as tuples; an untagged array is always a list.
        if isinstance(v, (list, tuple)):
            return [self.value(x) for x in v]
        if isinstance(v, cbor2.CBORTag):
            tag, body = v.tag, v.value
            if tag == TAG_REF:
                if not isinstance(body, int) or not 0 <= body < len(self.objects):
                    raise ImageError("image kernel graph holds a dangling reference")
                return self.objects[body]
            if tag == TAG_FSSTR:
                if not isinstance(body, bytes):
                    raise ImageError("image kernel graph holds a malformed name")
                return os.fsdecode(body)
            if not isinstance(body, (list, tuple)) and tag != TAG_BYTEARRAY:
                raise ImageError("image kernel graph holds a malformed value")
            if tag == TAG_TUPLE:
                return tuple(self.value(x) for x in body)
            if tag == TAG_SET:
                return {self.value(x) for x in body}
            if tag == TAG_FROZENSET:
                return frozenset(self.value(x) for x in body)
            if tag == TAG_DICT:
                out = {}
                for pair in body:
                    if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                        raise ImageError("image kernel graph holds a malformed mapping")
                    out[self.value(pair[0])] = self.value(pair[1])
                return out
            if tag == TAG_BYTEARRAY:
                if not isinstance(body, bytes):
                    raise ImageError("image kernel graph holds a malformed byte array")
                return bytearray(body)
            if tag == TAG_ENUM:
                if len(body) != 2 or body[0] not in _enums_by_name:
                    raise ImageError("image holds a value of an unknown enum")
                try:
                    return _enums_by_name[body[0]](body[1])
                except ValueError:
                    raise ImageError(f"image holds an unknown {body[0]} value {body[1]!r}") from None
            raise ImageError(f"image kernel graph holds an unknown tag {tag}")
        if isinstance(v, dict):
            raise ImageError("image kernel graph holds a malformed mapping")
        return v

    def decode(self, ctx: Any) -> Any:
        self.types()
        rows = self.graph.get("objects")
        if not isinstance(rows, list) or not rows:
            raise ImageError("image kernel graph holds no objects")
        for row in rows:
            if not (isinstance(row, list) and len(row) == 2 and isinstance(row[0], int)):
                raise ImageError("image kernel graph holds a malformed object")
            if not 0 <= row[0] < len(self.infos):
                raise ImageError("image kernel graph names a type it does not declare")
            info = self.infos[row[0]][0]
            self.objects.append(object.__new__(info.cls))
        setattr_ = object.__setattr__
        for obj, (type_index, values) in zip(self.objects, rows):
            info, fields, plan = self.infos[type_index]
            if not isinstance(values, list) or len(values) != len(fields):
                raise ImageError(f"image holds a {info.name} with the wrong number of fields")
            for name, index, default, factory, want in plan:
                if index >= 0:
                    val = self.value(values[index])
                    if want is not None and not isinstance(val, want):
                        raise ImageError(f"image holds a {info.name} whose {name} is a {type(val).__name__}")
                elif default is not dataclasses.MISSING:
                    val = default
                elif factory is not dataclasses.MISSING:
                    val = factory()
                else:
                    raise ImageError(f"image holds a {info.name} without its field {name}")
                setattr_(obj, name, val)
        self.run_after_load(ctx)
        return self.objects[0]

    def run_after_load(self, ctx: Any) -> None:
        """Run every after_load hook: those an object names in `load_after` (field names)
        first, otherwise children before parents (reverse discovery order). Deterministic."""
        done: set[int] = set()
        active: list[Any] = []

        def visit(obj: Any) -> None:
            if id(obj) in done:
                return
            if any(o is obj for o in active):
                chain = " -> ".join(type(o).__name__ for o in active + [obj])
                raise ImageError(f"image cannot be loaded: after_load dependency cycle {chain}")
            active.append(obj)
            for name in getattr(type(obj), "load_after", ()):
                dep = getattr(obj, name, None)
                if type(dep) in _by_class:
                    visit(dep)
            hook = getattr(obj, "after_load", None)
            if hook is not None:
                hook(ctx)
            active.pop()
            done.add(id(obj))

        for obj in reversed(self.objects):
            visit(obj)


_FIELD_TYPES: dict[type, dict[str, tuple[type, ...]]] = {}


def _plan(info: TypeInfo, fields: list[str]) -> list[tuple]:
    """How to fill each field of `info`'s class from a row of an image that lists `fields`:
    (name, index in the row or -1, default, default factory, classes the value must be)."""
    checks = _field_types(info)
    where = {name: i for i, name in enumerate(fields)}
    return [(f.name, where.get(f.name, -1), f.default, f.default_factory, checks.get(f.name))
            for f in dataclasses.fields(info.cls)]


def _field_types(info: TypeInfo) -> dict[str, tuple[type, ...]]:
    """For each field whose annotation names plain classes (`Vma`, `int`, `Dir | None`),
    the classes a decoded value must be an instance of. Annotations that cannot be
    resolved here (Any, names imported only for type checking) are not checked."""
    cached = _FIELD_TYPES.get(info.cls)
    if cached is not None:
        return cached
    namespace = vars(sys.modules[info.cls.__module__])
    out: dict[str, tuple[type, ...]] = {}
    for f in dataclasses.fields(info.cls):
        ann = f.type
        if isinstance(ann, str):
            try:
                ann = eval(ann, namespace)  # noqa: S307 - our own annotations
            except Exception:
                continue
        parts = typing.get_args(ann) if isinstance(ann, types.UnionType) else (ann,)
        classes = []
        for part in parts:
            part = typing.get_origin(part) or part
            if part is None or part is type(None):
                classes.append(type(None))
            elif isinstance(part, type) and part is not object:
                classes.append(part)
            else:
                classes = []
                break
        if classes:
            out[f.name] = tuple(classes)
    _FIELD_TYPES[info.cls] = out
    return out


def decode_graph(data: bytes, ctx: Any = None) -> Any:
    """Rebuild the object graph from `encode_graph` bytes; `ctx` is passed to after_load hooks."""
    try:
        graph = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as e:
        raise ImageError(f"image kernel graph is corrupt ({e})") from None
    try:
        return _Decoder(graph).decode(ctx)
    except RecursionError:
        raise ImageError("image kernel graph is nested too deeply") from None
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as e:
        # A graph of the right types whose values still do not fit together.
        raise ImageError(f"image kernel graph is inconsistent ({type(e).__name__}: {e})") from None
