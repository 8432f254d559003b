"""Property tests: every output satisfies its privacy models, is optimal, and passes pycanon's checks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycanon import anonymity

from ppml.anonymization import (
    AnonymizationConfig,
    Hierarchy,
    HierarchySpec,
    LDiversity,
    TCloseness,
    anonymize,
    lattice,
    verify_release,
)
from ppml.anonymization._kernels import HAVE_NUMBA, group_rollup_numpy, kernels, pair_histograms_numpy
from ppml.anonymization._kernels import pair_grids_kernel as kernels_pair_grids
from ppml.anonymization.engine import build_problem
from ppml.anonymization.lattice import _TableCache, all_nodes
from ppml.anonymization.verify import exhaustive_optimum
from ppml.errors import PPMLError

COLOUR = Hierarchy.from_rows(
    [
        ("red", "warm", "*"),
        ("orange", "warm", "*"),
        ("yellow", "warm", "*"),
        ("blue", "cold", "*"),
        ("green", "cold", "*"),
        ("violet", "other", "*"),
    ]
)
DIAGNOSIS = Hierarchy.from_rows(
    [
        ("flu", "respiratory", "*"),
        ("asthma", "respiratory", "*"),
        ("ulcer", "digestive", "*"),
        ("gastritis", "digestive", "*"),
        ("none", "none", "*"),
    ]
)


@st.composite
def problems(draw: st.DrawFn) -> tuple[pd.DataFrame, AnonymizationConfig]:
    n = draw(st.integers(6, 60))
    age = draw(st.lists(st.integers(18, 60), min_size=n, max_size=n))
    zips = draw(
        st.lists(st.sampled_from(["02139", "02138", "02141", "10001", "10003", "94105"]), min_size=n, max_size=n)
    )
    colour = draw(st.lists(st.sampled_from([r[0] for r in COLOUR.rows]), min_size=n, max_size=n))
    diagnosis = draw(st.lists(st.sampled_from([r[0] for r in DIAGNOSIS.rows]), min_size=n, max_size=n))
    df = pd.DataFrame({"age": age, "zip": zips, "colour": colour, "diagnosis": diagnosis, "id": range(n)})
    qis = {
        "age": HierarchySpec({"type": "interval", "widths": draw(st.sampled_from([[5], [5, 10], [2, 10, 20]]))}),
        "zip": HierarchySpec({"type": "prefix", "keep": [3, 1]}),
        "colour": COLOUR,
    }
    drop = draw(st.sampled_from([None, "zip", "colour"]))
    if drop:
        qis.pop(drop)
    l_models: tuple[LDiversity, ...] = ()
    t_models: tuple[TCloseness, ...] = ()
    model = draw(st.sampled_from(["none", "distinct", "entropy", "recursive", "equal", "hierarchical"]))
    if model in ("distinct", "entropy"):
        l_models = (LDiversity("diagnosis", draw(st.sampled_from([2, 3])), model),)
    elif model == "recursive":
        l_models = (LDiversity("diagnosis", 2, "recursive", draw(st.sampled_from([1.5, 3.0]))),)
    elif model in ("equal", "hierarchical"):
        t_models = (TCloseness("diagnosis", draw(st.sampled_from([0.2, 0.4, 0.6])), model),)
    config = AnonymizationConfig(
        qis,
        k=draw(st.integers(2, 5)),
        l_diversity=l_models,
        t_closeness=t_models,
        suppression_limit=draw(st.sampled_from([0.0, 0.1, 0.3])),
        metric=draw(st.sampled_from(["loss", "loss", "entropy", "discernibility", "aecs"])),
        sensitive_hierarchies={"diagnosis": DIAGNOSIS},
    )
    return df, config


def reference_violations(df: pd.DataFrame, config: AnonymizationConfig) -> int:
    """Plain-Python per-class check of k, entropy and recursive l (independent of the vectorized models)."""
    bad = 0
    for _, group in df.groupby(list(config.quasi_identifiers)):
        if len(group) < config.k:
            bad += 1
        for model in config.l_diversity:
            freq = sorted(group[model.attribute].value_counts().tolist(), reverse=True)
            if model.variant == "entropy":
                entropy = -sum(f / len(group) * math.log(f / len(group)) for f in freq)
                bad += entropy < math.log(model.l) - 1e-9
            elif model.variant == "recursive":
                need = math.ceil(model.l)
                bad += len(freq) < need or not freq[0] < model.c * sum(freq[need - 1 :])
            else:
                bad += len(freq) < model.l
    return bad


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_outputs_satisfy_models_and_are_optimal(problem: tuple[pd.DataFrame, AnonymizationConfig]) -> None:
    df, config = problem
    best = exhaustive_optimum(df, config)
    try:
        result = anonymize(df, config)
    except PPMLError as exc:
        assert "no transformation that satisfies" in str(exc)
        assert best == math.inf
        return
    assert result.quality["value"] == pytest.approx(best, rel=1e-12, abs=1e-12)
    released = result.data
    assert result.suppressed_records <= math.floor(config.suppression_limit * len(df) + 1e-9)
    assert len(released) == len(df) - result.suppressed_records
    assert verify_release(released, config, original=df) == []
    assert reference_violations(released, config) == 0
    qis = list(config.quasi_identifiers)
    if len(released):
        assert anonymity.k_anonymity(released, qis) >= config.k
        for model in config.l_diversity:
            if model.variant == "distinct":
                assert anonymity.l_diversity(released, qis, [model.attribute]) >= model.l
        for model in config.t_closeness:
            if model.variant == "equal" and result.suppressed_records == 0:
                # pycanon measures against the release's own distribution, equal to the input's here
                assert anonymity.t_closeness(released, qis, [model.attribute]) <= model.t + 1e-9
    assert set(released["id"]) <= set(df["id"])  # non-QI columns are carried over untouched


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_heuristic_outputs_satisfy_models(problem: tuple[pd.DataFrame, AnonymizationConfig]) -> None:
    df, base = problem
    best = exhaustive_optimum(df, base)
    for budget in (0, 3_000):  # greedy phases alone, then with a best-first phase that completes
        config = AnonymizationConfig(**{**base.__dict__, "max_optimal_nodes": 1, "heuristic_checks": budget})
        try:
            result = anonymize(df, config)
        except PPMLError as exc:
            assert "no transformation that satisfies" in str(exc)
            assert budget == 0 or best == math.inf
            continue
        assert verify_release(result.data, config, original=df) == []
        assert result.quality["value"] >= best - 1e-12
        if result.optimal:
            assert result.quality["value"] == pytest.approx(best, rel=1e-12, abs=1e-12)
        else:
            assert result.to_report()["search"].startswith("heuristic")
        if budget == 3_000:
            assert result.optimal  # the small lattices are searched completely within the budget


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 400),
    st.lists(st.integers(1, 12), min_size=1, max_size=5),
    st.randoms(use_true_random=False),
)
def test_compiled_and_numpy_rollups_agree(rows: int, cards: list[int], rnd) -> None:
    rng = np.random.default_rng(rnd.randint(0, 2**32 - 1))
    d = len(cards)
    codes = np.stack([rng.integers(0, c, rows) for c in cards]).astype(np.int64)
    targets = [max(1, c // 2) for c in cards]
    maps = np.concatenate([rng.integers(0, t, c) for c, t in zip(cards, targets, strict=True)]).astype(np.int64)
    offsets = np.cumsum([0, *cards[:-1]]).astype(np.int64)
    offsets[rng.random(d) < 0.3] = -1
    new_cards = np.array([c if o < 0 else t for c, t, o in zip(cards, targets, offsets, strict=True)], np.int64)
    counts = rng.integers(1, 5, rows).astype(np.int64)
    source_cards = np.array(cards, dtype=np.int64)
    group_rollup = kernels(float("inf"))[0]  # compiled when numba is installed
    inverse_a, codes_a, counts_a = group_rollup(codes, maps, offsets, new_cards, counts, source_cards)
    inverse_b, codes_b, counts_b = group_rollup_numpy(codes, maps, offsets, new_cards, counts, source_cards)
    # same partition, same class tuples and sizes (group numbering may differ)
    order_a = np.lexsort(codes_a[::-1])
    order_b = np.lexsort(codes_b[::-1])
    assert np.array_equal(codes_a[:, order_a], codes_b[:, order_b])
    assert np.array_equal(counts_a[order_a], counts_b[order_b])
    assert np.array_equal(codes_a[:, inverse_a], codes_b[:, inverse_b])


def test_kernel_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PPML_ANONYMIZATION_JIT", "off")
    assert kernels(float("inf"))[0] is group_rollup_numpy
    monkeypatch.setenv("PPML_ANONYMIZATION_JIT", "on")
    assert (kernels(0.0)[0] is not group_rollup_numpy) == HAVE_NUMBA


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_pair_prefilter_counts_forced_suppression(problem: tuple[pd.DataFrame, AnonymizationConfig]) -> None:
    """The pairwise pre-filter's counts are exactly the records in too-small pair classes, a floor for every node."""
    df, config = problem
    try:
        encoded = build_problem(df, config)
    except PPMLError:
        return
    problem_ = encoded.problem
    source = problem_.base
    k = problem_.k_model.k
    d = len(problem_.attributes)
    assert len(problem_.pair_suppression(source)) == (d * (d - 1) // 2 if k > 1 else 0)
    for i, j, grid in problem_.pair_suppression(source):
        a, b = problem_.attributes[i], problem_.attributes[j]
        assert grid.shape == (a.height, b.height)
        for level_i in range(a.height):
            for level_j in range(b.height):
                pair = pd.DataFrame(
                    {
                        "i": a.leaf_to_level[level_i][encoded.row_codes[i]],
                        "j": b.leaf_to_level[level_j][encoded.row_codes[j]],
                    }
                )
                sizes = pair.groupby(["i", "j"]).size()
                assert grid[level_i, level_j] == int(sizes[sizes < k].sum())
    cache = _TableCache(problem_)
    for levels in all_nodes(problem_.heights):
        counts = cache.get(levels).counts
        suppressed = int(counts[problem_.k_model.violations(counts)].sum())
        for i, j, grid in problem_.pair_suppression(source):
            assert grid[levels[i], levels[j]] <= suppressed


@pytest.mark.skipif(not HAVE_NUMBA, reason="the compiled pre-filter needs numba")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), st.randoms(use_true_random=False))
def test_compiled_and_numpy_pair_prefilters_agree(problem: tuple[pd.DataFrame, AnonymizationConfig], rnd) -> None:
    """The one-call compiled pair pre-filter gives the numpy path's grids, from the base and from a higher table."""
    df, config = problem
    try:
        problem_ = build_problem(df, config).problem
    except PPMLError:
        return
    levels = np.array([rnd.randint(0, h - 1) for h in problem_.heights], dtype=np.int64)
    for source in (problem_.base, problem_.rollup(problem_.base, levels)):
        problem_._pair_grids = kernels_pair_grids(float("inf"))
        assert problem_._pair_grids is not None
        compiled = problem_.pair_suppression(source)
        problem_._pair_grids = None
        plain = problem_.pair_suppression(source)
        assert [(i, j) for i, j, _ in compiled] == [(i, j) for i, j, _ in plain]
        for (_, _, a), (_, _, b) in zip(compiled, plain, strict=True):
            assert np.array_equal(a, b)


def test_node_arrays_are_cached_read_only_and_per_shape() -> None:
    """all_nodes depends only on the heights: cached, read-only (a search cannot alter another's), never another
    shape's, and only for small lattices."""
    first = all_nodes([2, 3])
    assert all_nodes([2, 3]) is first and not first.flags.writeable
    assert np.array_equal(first, np.indices((2, 3)).reshape(2, -1).T)
    other = all_nodes([3, 2])
    assert other is not first and np.array_equal(other, np.indices((3, 2)).reshape(2, -1).T)
    big = [12] * 5  # 248,832 nodes x 5 attributes: over the cache's cell limit
    assert all_nodes(big) is not all_nodes(big)
    for h in range(2, 2 + lattice.NODES_CACHE_SIZE + 3):
        all_nodes([h, 2])
    assert len(lattice._NODES) <= lattice.NODES_CACHE_SIZE


@pytest.mark.parametrize("direct_open", [0, 10**9])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems())
def test_climbing_and_direct_checks_find_the_optimum(
    direct_open: int, problem: tuple[pd.DataFrame, AnonymizationConfig]
) -> None:
    """Both ways of deciding a node's status (climb with binary search, or check it directly) are exact."""
    df, config = problem
    best = exhaustive_optimum(df, config)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lattice, "DIRECT_OPEN", direct_open)
        try:
            result = anonymize(df, config)
        except PPMLError:
            assert best == math.inf
            return
    assert result.quality["value"] == pytest.approx(best, rel=1e-12, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 300), st.lists(st.integers(1, 9), min_size=2, max_size=5), st.randoms(use_true_random=False))
def test_compiled_and_numpy_pair_histograms_agree(rows: int, cards: list[int], rnd) -> None:
    rng = np.random.default_rng(rnd.randint(0, 2**32 - 1))
    codes = np.stack([rng.integers(0, c, rows) for c in cards]).astype(np.int64)
    counts = rng.integers(1, 5, rows).astype(np.int64)
    pairs = [(i, j) for i in range(len(cards)) for j in range(i + 1, len(cards))]
    first = np.array([i for i, _ in pairs], dtype=np.int64)
    second = np.array([j for _, j in pairs], dtype=np.int64)
    widths = np.array([cards[j] for _, j in pairs], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum([cards[i] * cards[j] for i, j in pairs])]).astype(np.int64)
    compiled = kernels(float("inf"))[2](codes, counts, first, second, widths, starts)
    plain = pair_histograms_numpy(codes, counts, first, second, widths, starts)
    assert np.array_equal(compiled, plain)
    i, j = pairs[-1]
    expected = np.zeros((cards[i], cards[j]), dtype=np.int64)
    np.add.at(expected, (codes[i], codes[j]), counts)
    assert np.array_equal(plain[starts[-2] :].reshape(cards[i], cards[j]), expected)


def test_labels_are_numbered_in_tree_order() -> None:
    """The pairwise pre-filter sums contiguous runs of codes: every level map must be non-decreasing."""
    from ppml.anonymization.datasets import adult_hierarchies
    from ppml.anonymization.encoding import EncodedAttribute

    built = [
        HierarchySpec({"type": "interval", "widths": [5, 10, 20]}).build([str(v) for v in range(90, 0, -3)], "age"),
        HierarchySpec({"type": "prefix", "keep": [3, 1]}).build(["94105", "02139", "10001", "02141"], "zip"),
        COLOUR,
        DIAGNOSIS,
        *adult_hierarchies().values(),
    ]
    for hierarchy in built:
        encoded = EncodedAttribute.build("x", hierarchy)
        for a in range(encoded.height):
            for b in range(a, encoded.height):
                assert (np.diff(encoded.up[a][b]) >= 0).all()


def test_hierarchy_encodings_are_cached_and_bounded() -> None:
    from ppml.anonymization import encoding

    first = encoding.EncodedAttribute.build("colour", COLOUR)
    assert encoding.EncodedAttribute.build("colour", COLOUR) is first
    renamed = encoding.EncodedAttribute.build("shade", COLOUR)
    assert renamed.name == "shade" and renamed.up is first.up
    assert not first.leaf_to_level[1].flags.writeable  # shared between runs: read-only
    for i in range(encoding.ENCODED_CACHE_SIZE + 5):
        encoding.EncodedAttribute.build("x", Hierarchy.from_rows([(f"v{i}", "*"), ("w", "*")]))
    assert len(encoding._ENCODED) == encoding.ENCODED_CACHE_SIZE
