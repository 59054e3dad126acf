"""The report's SVG charts: valid XML, data placed where its scale says, gaps at NaN, labels escaped."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from titan_conformance.report.svg_chart import Chart, Scale, nice_ticks

NS = {"s": "http://www.w3.org/2000/svg"}


def parse(chart: Chart) -> ET.Element:
    return ET.fromstring(chart.svg())


def polylines(root: ET.Element) -> list[list[tuple[float, float]]]:
    return [[tuple(map(float, p.split(","))) for p in line.get("points").split()]
            for line in root.iterfind(".//s:polyline", NS)]


@pytest.mark.parametrize("lo, hi, integer, expected", [
    (0, 1, False, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    (-4e-6, 4e-6, False, [-4e-6, -2e-6, 0, 2e-6, 4e-6]),
    (0.5, 20.5, True, [5, 10, 15, 20]),
    (0.9, 3.1, True, [1, 2, 3]),  # whole steps: never 1.5
])
def test_ticks_are_round_values_inside_the_range(lo, hi, integer, expected):
    assert nice_ticks(lo, hi, integer) == pytest.approx(expected)


def test_symlog_is_linear_near_zero_and_logarithmic_beyond():
    scale = Scale("symlog", lo=0, hi=1000)
    assert scale.ticks() == [0, 1, 10, 100, 1000]
    steps = [scale.frac(v) for v in (0, 1, 10, 100, 1000)]
    assert steps[0] == 0 and steps[-1] == 1
    assert all(b - a == pytest.approx(0.25) for a, b in zip(steps, steps[1:]))  # one decade each


def test_a_line_is_placed_by_its_data_and_broken_at_nan():
    chart = Chart("x", "y", y=Scale(lo_fixed=0.0))
    chart.line([1, 2, 3, 4, 5], [1.0, 2.0, math.nan, 4.0, 5.0], "a")
    root = parse(chart)
    first, second = polylines(root)  # two pieces: the NaN is a gap, not a drop to 0
    assert len(first) == 2 and len(second) == 2
    (x1, y1), (x2, y2) = first
    assert x2 > x1 and y2 < y1  # larger y is higher up the page
    assert second[1][0] > second[0][0] > x2


def test_bars_stack_and_categories_label_the_axis():
    chart = Chart("seconds", "variant", yticks=["base", "fp32"], x=Scale(lo_fixed=0.0))
    chart.rects([(0, 2, -0.4, 0.4), (0, 3, 0.6, 1.4)], "compile")
    chart.rects([(2, 3, -0.4, 0.4), (3, 5, 0.6, 1.4)], "capture")
    root = parse(chart)
    texts = [t.text for t in root.iterfind(".//s:text", NS)]
    assert {"base", "fp32", "compile", "capture", "seconds", "variant"} <= set(texts)
    bars = [r for r in root.iterfind(".//s:g/s:rect", NS)]
    assert len(bars) == 4
    compile_base, _, capture_base, _ = bars
    right_edge = float(compile_base.get("x")) + float(compile_base.get("width"))
    assert float(capture_base.get("x")) == pytest.approx(right_edge, abs=0.2)  # stacked, not overlapping


def test_labels_are_escaped():
    chart = Chart("a < b", "y & z")
    chart.line([0, 1], [0, 1], '<script>alert("x")</script>')
    svg = chart.svg()
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    parse(chart)
