"""Property-based tests (hypothesis): random object graphs round-trip; random damage to
encoded graphs and images is refused cleanly, never with a crash or a hang."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snapbox.state import ImageError, decode_graph, encode_graph, savable
from snapbox.state.image import ImageReader, ImageWriter


@savable(name="test.GraphNode")
@dataclass(eq=False)
class GraphNode:
    label: object = None
    edges: list = field(default_factory=list)
    table: dict = field(default_factory=dict)


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(1 << 200), max_value=1 << 200),
    st.floats(allow_nan=False), st.text(max_size=20), st.binary(max_size=40),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.frozensets(st.integers(), max_size=4),
        st.dictionaries(st.one_of(st.integers(), st.text(max_size=5), st.tuples(st.integers())), inner, max_size=4),
        st.binary(max_size=8).map(bytearray),
    ),
    max_leaves=12,
)


@st.composite
def graphs(draw):
    """A list of nodes with random labels and random edges between them (cycles included)."""
    n = draw(st.integers(min_value=1, max_value=12))
    nodes = [GraphNode(label=draw(values)) for _ in range(n)]
    for node in nodes:
        node.edges = [nodes[i] for i in draw(st.lists(st.integers(0, n - 1), max_size=4))]
        keys = draw(st.lists(st.integers(0, 100), max_size=3, unique=True))
        node.table = {k: nodes[draw(st.integers(0, n - 1))] for k in keys}
    return nodes


def shape(root: GraphNode) -> list:
    """The graph as plain data: node order by discovery, edges as indices."""
    order, index, out = [root], {id(root): 0}, []
    i = 0
    while i < len(order):
        node = order[i]
        for nxt in list(node.edges) + list(node.table.values()):
            if id(nxt) not in index:
                index[id(nxt)] = len(order)
                order.append(nxt)
        i += 1
    for node in order:
        out.append((node.label, [index[id(e)] for e in node.edges],
                    {k: index[id(v)] for k, v in node.table.items()}))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_random_graphs_round_trip(nodes):
    root = nodes[0]
    out = decode_graph(encode_graph(root))
    assert shape(out) == shape(root)
    assert encode_graph(out) == encode_graph(root)  # and the bytes are stable


@settings(max_examples=300, deadline=None)
@given(graphs(), st.data())
def test_damaged_graphs_are_refused_or_decoded_never_crash(nodes, data):
    blob = bytearray(encode_graph(nodes[0]))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    try:
        decode_graph(bytes(blob[:cut]))
    except ImageError:
        pass


def test_deep_nesting_is_refused():
    deep = b"\x81" * 100_000 + b"\x00"  # a hundred thousand nested one-element arrays
    try:
        decode_graph(deep)
    except ImageError:
        return
    raise AssertionError("deeply nested input was accepted")


def _image(payloads: list[bytes]) -> bytes:
    f = io.BytesIO()
    w = ImageWriter(f, {"k": 1})
    with w.section("kernel") as s:
        for p in payloads:
            s.write_chunk(p)
    w.finish()
    return f.getvalue()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=5), st.data())
def test_damaged_images_are_refused(payloads, data):
    blob = bytearray(_image(payloads))
    pos = data.draw(st.integers(0, len(blob) - 1))
    blob[pos] ^= data.draw(st.integers(1, 255))
    r = None
    try:
        r = ImageReader(io.BytesIO(bytes(blob)))
        got = [bytes(c) for c in r.section("kernel")]
        r.finish()
    except ImageError:
        return
    # A flip that survived every check must have been in a place that does not matter.
    assert got == payloads and r is not None


def test_random_garbage_is_refused():
    rng = random.Random(7)
    for _ in range(200):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        try:
            ImageReader(io.BytesIO(junk)).finish()
        except ImageError:
            continue
        raise AssertionError(f"garbage accepted: {junk!r}")


def _golden_graph() -> bytes:
    import zstandard

    from tests.conftest import REPO

    with open(REPO / "tests" / "golden" / "counter-format1.img", "rb") as f:
        r = ImageReader(f)
        r.read_section("cpuid")
        return zstandard.ZstdDecompressor().decompress(r.read_section("kernel"))


GOLDEN_GRAPH = _golden_graph()


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(GOLDEN_GRAPH) - 1), st.integers(0, 255)), min_size=1, max_size=3))
def test_damaged_kernel_graphs_are_refused_or_decoded(edits):
    """A real kernel graph (the golden image's), damaged past its checksums: the decoder
    refuses it with an ImageError or builds a graph whose fields have the declared types."""
    from snapbox.kernel.checkpoint import LoadContext
    from snapbox.kernel.kernel import Kernel

    blob = bytearray(GOLDEN_GRAPH)
    for pos, byte in edits:
        blob[pos] = byte
    try:
        kernel = decode_graph(bytes(blob), LoadContext())
    except ImageError:
        return
    if isinstance(kernel, Kernel):
        kernel.memfile.close()
