"""Cost–quality metrics on hand-checkable points."""

import pytest

from escalon.offline.evaluation.metrics import aiq, cost_to_match, frontier, quality_at_cost, upper_hull

pytestmark = pytest.mark.unit


def test_frontier_drops_dominated_points_cheapest_first():
    points = [(3.0, 0.9), (1.0, 0.5), (2.0, 0.4), (2.5, 0.9), (2.0, 0.7)]
    assert frontier(points) == [(1.0, 0.5), (2.0, 0.7), (2.5, 0.9)]


def test_upper_hull_drops_points_under_the_chord():
    # (2, 0.6) lies under the chord from (1, 0.5) to (3, 0.9) (which passes 0.7 at cost 2)
    assert upper_hull([(1.0, 0.5), (2.0, 0.6), (3.0, 0.9)]) == [(1.0, 0.5), (3.0, 0.9)]
    assert upper_hull([(1.0, 0.5), (2.0, 0.8), (3.0, 0.9)]) == [(1.0, 0.5), (2.0, 0.8), (3.0, 0.9)]


def test_aiq_is_the_area_under_the_hull_over_the_range():
    # linear from 0.5 to 0.9 over [1, 3]: mean 0.7; a point under the hull changes nothing
    assert aiq([(1.0, 0.5), (3.0, 0.9)], 1.0, 3.0) == pytest.approx(0.7)
    assert aiq([(1.0, 0.5), (2.0, 0.6), (3.0, 0.9)], 1.0, 3.0) == pytest.approx(0.7)
    # one point at cost 2: nothing is affordable on [1, 2), 0.8 on [2, 3]
    assert aiq([(2.0, 0.8)], 1.0, 3.0) == pytest.approx(0.4)
    # beyond its dearest point a policy keeps its quality
    assert aiq([(1.0, 0.6)], 1.0, 3.0) == pytest.approx(0.6)


def test_quality_at_cost_and_cost_to_match_use_actual_points():
    points = [(1.0, 0.5), (2.0, 0.7), (4.0, 0.9)]
    assert quality_at_cost(points, 3.0) == 0.7
    assert quality_at_cost(points, 0.5) is None
    assert cost_to_match(points, 0.7) == 2.0
    assert cost_to_match(points, 0.95) is None
