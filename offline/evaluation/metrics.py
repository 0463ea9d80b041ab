"""Cost–quality metrics of routing policies (docs/routing.md, Metrics and baselines), on plain (cost, quality) operating points.

- frontier: the points no other point beats on both cost and quality, cheapest first.
- upper hull: the non-decreasing upper convex hull of the points. Any point on it is reachable by mixing two
  operating points at random, so it is the policy's best quality at each budget.
- AIQ (RouterBench): the area under the hull over a shared cost range [lo, hi], divided by hi − lo. Beyond
  its most expensive point a policy keeps that quality (it can always spend less than its budget); below its
  cheapest point it cannot answer within the budget, which counts as quality 0. So a policy's AIQ is its mean
  best quality over budgets spread evenly across the range, and policies are compared on the same range.
- quality_at_cost: the best quality among operating points costing at most `cost` (an actual point, no mixing).
- cost_to_match: the cheapest operating point whose quality reaches `quality` (None when none does).
"""

from __future__ import annotations

from collections.abc import Sequence

Point = tuple[float, float]  # (mean cost per query, mean quality)
TOLERANCE = 1e-12


def frontier(points: Sequence[Point]) -> list[Point]:
    best, out = float("-inf"), []
    for cost, quality in sorted(points, key=lambda p: (p[0], -p[1])):
        if quality > best + TOLERANCE:
            out.append((cost, quality))
            best = quality
    return out


def upper_hull(points: Sequence[Point]) -> list[Point]:
    """Non-decreasing upper convex hull, cheapest first (a monotone chain over the frontier)."""
    hull: list[Point] = []
    for p in frontier(points):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            # drop the middle point when it lies on or below the chord from hull[-2] to p
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def hull_quality(hull: Sequence[Point], cost: float) -> float:
    """Quality of the hull at a budget: 0 below its cheapest point, flat beyond its dearest."""
    if not hull or cost < hull[0][0] - TOLERANCE:
        return 0.0
    for (x1, y1), (x2, y2) in zip(hull, hull[1:]):
        if cost <= x2:
            return y1 if x2 == x1 else y1 + (y2 - y1) * (cost - x1) / (x2 - x1)
    return hull[-1][1]


def aiq(points: Sequence[Point], lo: float, hi: float) -> float:
    """Area under the upper hull over [lo, hi] divided by hi − lo (exact: the hull is piecewise linear)."""
    hull = upper_hull(points)
    if not hull:
        return 0.0
    if hi <= lo:
        return hull_quality(hull, hi)
    knots = sorted({lo, hi, *(x for x, _ in hull if lo < x < hi)})
    area = 0.0
    for a, b in zip(knots, knots[1:]):
        # the hull is linear on (a, b), except for the step up at its cheapest point, which is a knot
        if a < hull[0][0] - TOLERANCE:
            continue  # below the cheapest point: quality 0
        area += (hull_quality(hull, a) + hull_quality(hull, b)) / 2 * (b - a)
    return area / (hi - lo)


def quality_at_cost(points: Sequence[Point], cost: float) -> float | None:
    eligible = [q for c, q in points if c <= cost * (1 + 1e-9) + TOLERANCE]
    return max(eligible) if eligible else None


def cost_to_match(points: Sequence[Point], quality: float) -> float | None:
    eligible = [c for c, q in points if q >= quality - 1e-9]
    return min(eligible) if eligible else None
