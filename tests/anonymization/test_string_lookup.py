"""The compiled string lookup (issue 15) assigns exactly the codes of the general path (Arrow's index_in)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppml.anonymization import Hierarchy
from ppml.anonymization._arrow_strings import encode
from ppml.anonymization._kernels import HAVE_NUMBA, string_kernels
from ppml.anonymization.encoding import EncodedAttribute, encode_column
from ppml.errors import PPMLError

pytestmark = pytest.mark.skipif(not HAVE_NUMBA, reason="the compiled lookup needs numba")

# Strings that share their length and first and last 8 bytes but differ in between (only the middle check tells
# them apart), empty and multi-byte ones, and lengths around the 8- and 16-byte word boundaries.
TRICKY = [
    "",
    "a",
    "abcdefgh",
    "abcdefghi",
    "abcdefghijklmnop",
    "abcdefghijklmnopq",
    "abcdefgh-1-ijklmnop",
    "abcdefgh-2-ijklmnop",
    "abcdefgh-12345678-ijklmnop",
    "abcdefgh-12345679-ijklmnop",
    "Married-civ-spouse",
    "Married-spouse-absent",
    "Zürich",
    "日本語のテキスト",
]


@pytest.fixture()
def compiled(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PPML_ANONYMIZATION_JIT", "on")
    kernels = string_kernels()
    assert kernels is not None
    return kernels


def _hierarchy(values: list[str]) -> Hierarchy:
    return Hierarchy.from_rows([(value, "*") for value in values], source="test")


def _general_codes(array: pa.Array, attribute: EncodedAttribute) -> np.ndarray | None:
    """Arrow's index_in, the engine's general path (None: a value is not in the hierarchy)."""
    index = pc.index_in(array, value_set=attribute.leaf_values)
    if index.null_count:
        return None
    return np.asarray(attribute.leaf_value_codes)[index.to_numpy(zero_copy_only=False)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(st.one_of(st.sampled_from(TRICKY), st.text(max_size=30)), min_size=1, max_size=40, unique=True),
    picks=st.lists(st.integers(0, 10**6), max_size=200),
    foreign=st.lists(st.one_of(st.sampled_from(TRICKY), st.text(max_size=30)), max_size=3),
    cut=st.integers(0, 5),
    large=st.booleans(),
)
def test_compiled_lookup_equals_index_in(
    compiled, values: list[str], picks: list[int], foreign: list[str], cut: int, large: bool
) -> None:
    """Same codes for every value, and "not found" exactly when a value is missing from the hierarchy; also on a
    sliced array (non-zero offset), 32-bit offsets and a chunked array."""
    attribute = EncodedAttribute.build("x", _hierarchy(values))
    data = [values[p % len(values)] for p in picks] + foreign
    kind = pa.large_string() if large else pa.string()
    array = pa.array(["padding"] * cut + data, kind).slice(cut)
    chunked = pa.chunked_array([array.slice(0, len(data) // 2), array.slice(len(data) // 2)], kind)
    expected = _general_codes(array.cast(pa.large_string()), attribute)
    for candidate in (array, chunked):
        out = np.full(len(data), -7, dtype=np.int64)
        found = encode(candidate, attribute.value_table(compiled), out, compiled)
        assert found == (expected is not None)
        if found:
            assert np.array_equal(out, expected)


def test_nulls_and_missing_values_take_the_general_path(compiled) -> None:
    attribute = EncodedAttribute.build("x", _hierarchy(["a", "b"]))
    table = attribute.value_table(compiled)
    out = np.empty(3, dtype=np.int64)
    assert not encode(pa.array(["a", None, "b"], pa.large_string()), table, out, compiled)
    assert not encode(pa.array(["a", "c", "b"], pa.large_string()), table, out, compiled)
    # and encode_column then raises the general path's error, naming the value
    column = pd.Series(["a", "c", "b"], dtype="str")
    with pytest.raises(PPMLError, match="'c' is not in the hierarchy"):
        encode_column(column, attribute, "test")


def test_changed_hierarchy_is_not_served_a_stale_table(compiled) -> None:
    """The lookup table is cached per hierarchy: a hierarchy with other values or another order gets its own."""
    before = EncodedAttribute.build("x", _hierarchy(["b", "a", "c"]))
    after = EncodedAttribute.build("x", _hierarchy(["b", "a", "c", "d"]))
    reordered = EncodedAttribute.build("x", Hierarchy.from_rows([("b", "2"), ("a", "1"), ("c", "1")]))
    column = pd.Series(["a", "b", "c", "a"], dtype="str")
    with_d = pd.Series(["d", "a"], dtype="str")
    for attribute in (before, after, reordered):
        expected = _general_codes(pa.array(column.array), attribute)
        assert np.array_equal(encode_column(column, attribute, "test"), expected)
    assert np.array_equal(encode_column(with_d, after, "test"), _general_codes(pa.array(with_d.array), after))
    with pytest.raises(PPMLError, match="'d' is not in the hierarchy"):
        encode_column(with_d, before, "test")
    assert not np.array_equal(
        encode_column(column, before, "test"), encode_column(column, reordered, "test")
    )  # the codes follow each hierarchy's tree order
    # renamed copies of one encoding share its table; the table is built once
    renamed = EncodedAttribute.build("y", _hierarchy(["b", "a", "c"]))
    assert renamed.value_table(compiled) is before.value_table(compiled)


def test_adult_codes_match_the_general_path(adult: pd.DataFrame, adult_h: dict, monkeypatch) -> None:
    """All nine Adult QIs (values up to 26 bytes) encode to the same codes with and without the compiled path."""
    for name, hierarchy in adult_h.items():
        attribute = EncodedAttribute.build(name, hierarchy)
        monkeypatch.setenv("PPML_ANONYMIZATION_JIT", "off")
        general = encode_column(adult[name], attribute, "adult")
        monkeypatch.setenv("PPML_ANONYMIZATION_JIT", "on")
        assert np.array_equal(encode_column(adult[name], attribute, "adult"), general)
