"""A small SVG chart for the report's plots: lines, steps, bars and reference lines on one axes.

The report is written at the end of every session, on its critical path: matplotlib took 0.9-1.3 s
of it (0.5 s its import, the rest drawing and PNG-encoding five figures), this takes milliseconds, and
its vector plots stay sharp when zoomed. Scales: linear, and symlog (linear within +-linthresh,
logarithmic outside, so exact zeros and counts in the thousands share one axis). Categorical axes
are numeric positions 0..n-1 with their names as tick labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
DASHES = {"-": "", "--": "6 3", ":": "1.5 2.5", "-.": "6 2.5 1.5 2.5"}
CHAR_W = 6.2
"""Width of a character of 11 px sans-serif, on average (for layout; SVG has no text metrics)."""


@dataclass
class Scale:
    """One axis's mapping from data to [0, 1]."""

    kind: str = "linear"
    """"linear" or "symlog"."""
    linthresh: float = 1.0
    """symlog: the half-width of the linear part around 0."""
    integer: bool = False
    """Ticks at whole numbers only (steps, positions)."""
    lo_fixed: float | None = None
    """The axis starts here rather than a margin below the data (e.g. 0 for times)."""
    lo: float = 0.0
    """The axis's ends, set from the data when the chart is drawn."""
    hi: float = 1.0

    def t(self, v: float) -> float:
        """`v` in the scale's own linear space (symlog: log10 decades beyond linthresh)."""
        if self.kind == "linear":
            return v
        a = abs(v) / self.linthresh
        return math.copysign(a if a <= 1 else 1 + math.log10(a), v)

    def frac(self, v: float) -> float:
        lo, hi = self.t(self.lo), self.t(self.hi)
        return (self.t(v) - lo) / (hi - lo) if hi > lo else 0.5

    def ticks(self) -> list[float]:
        if self.kind == "symlog":
            top = max(abs(self.lo), abs(self.hi))
            decades = [self.linthresh * 10**k for k in range(int(math.log10(max(top / self.linthresh, 1))) + 1)]
            values = [0.0, *decades, *(-d for d in decades)]
            return sorted(v for v in values if self.lo <= v <= self.hi)
        return nice_ticks(self.lo, self.hi, self.integer)


def nice_ticks(lo: float, hi: float, integer: bool = False, target: int = 6) -> list[float]:
    """About `target` round values (steps of 1, 2, 2.5 or 5 x 10^k; whole steps when `integer`)
    from lo to hi."""
    if hi <= lo:
        return [lo]
    raw = max((hi - lo) / target, 1.0 if integer else 0.0)
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in ((1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)) if m * step >= raw)
    first = math.ceil(lo / step - 1e-9)
    return [round(k * step, 12) for k in range(first, math.floor(hi / step + 1e-9) + 1)]


def tick_label(v: float) -> str:
    return "0" if v == 0 else f"{v:.4g}"


@dataclass
class _Legend:
    label: str
    color: str
    kind: str  # "line" or "box"
    dash: str = ""
    marker: bool = False


@dataclass
class Chart:
    """One axes: add series, then `svg()`. Colors follow PALETTE in the order series are added."""

    xlabel: str
    ylabel: str
    width: int = 800
    height: int = 320
    legend_right: bool = False
    """The legend beside the axes (many entries) rather than inside its upper right corner."""
    x: Scale = field(default_factory=Scale)
    y: Scale = field(default_factory=Scale)
    xticks: list[str] | None = None
    """Categorical x: names of positions 0..n-1 (drawn rotated)."""
    yticks: list[str] | None = None
    """Categorical y: names of positions 0..n-1."""
    _items: list = field(default_factory=list)
    _legend: list[_Legend] = field(default_factory=list)
    _colors: int = 0

    def next_color(self) -> str:
        self._colors += 1
        return PALETTE[(self._colors - 1) % len(PALETTE)]

    def line(self, xs, ys, label: str, *, color: str | None = None, style: str = "-", marker: bool = False,
             opacity: float = 1.0) -> str:
        """A polyline through (xs, ys), broken where y is NaN; its color is returned."""
        color = color or self.next_color()
        points = [(float(x), float(y)) for x, y in zip(xs, ys)]
        self._items.append(("line", points, color, DASHES[style], marker, opacity))
        self._legend.append(_Legend(label, color, "line", DASHES[style], marker))
        return color

    def stairs(self, counts, edges, label: str) -> None:
        """A histogram outline: counts[i] over [edges[i], edges[i + 1])."""
        xs, ys = [float(edges[0])], [0.0]
        for c, a, b in zip(counts, edges, edges[1:]):
            xs += [float(a), float(b)]
            ys += [float(c), float(c)]
        self.line([*xs, float(edges[-1])], [*ys, 0.0], label)

    def rects(self, boxes: list[tuple[float, float, float, float]], label: str) -> None:
        """Filled boxes (x0, x1, y0, y1) in data coordinates, one color: a bar series."""
        color = self.next_color()
        self._items.append(("rects", boxes, color))
        self._legend.append(_Legend(label, color, "box"))

    def vline(self, x: float, color: str = "red", style: str = "--") -> None:
        self._items.append(("vline", x, color, DASHES[style]))

    def _fit(self) -> None:
        """Axis ranges from the data, with a margin (none below a bar's base)."""
        xs, ys = [], []
        for item in self._items:
            if item[0] == "line":
                xs += [p[0] for p in item[1] if math.isfinite(p[0])]
                ys += [p[1] for p in item[1] if math.isfinite(p[1])]
            elif item[0] == "rects":
                for x0, x1, y0, y1 in item[1]:
                    xs += [x0, x1]
                    ys += [y0, y1]
            elif item[0] == "vline":
                xs.append(item[1])
        for scale, values, cats in ((self.x, xs, self.xticks), (self.y, ys, self.yticks)):
            if cats is not None:
                scale.lo, scale.hi = -0.6, len(cats) - 0.4
                continue
            values = [v for v in values if math.isfinite(v)] or [0.0, 1.0]
            lo, hi = min(values), max(values)
            fixed = scale.lo_fixed
            if fixed is not None:
                lo = fixed
            if hi == lo:
                lo, hi = lo - 0.5 * (abs(lo) or 1), hi + 0.5 * (abs(hi) or 1)
            pad = 0.05 * (scale.t(hi) - scale.t(lo))
            tlo = scale.t(lo) if fixed is not None else scale.t(lo) - pad
            thi = scale.t(hi) + pad
            if scale is self.y and self._legend and not self.legend_right:
                # Room above the data for the legend in the upper corner, so it hides none of it.
                room = min(0.5, (14 + 16 * len(self._legend)) / (self.height - 50))
                thi = tlo + (thi - tlo) / (1 - room)
            scale.lo, scale.hi = _inverse(scale, tlo), _inverse(scale, thi)

    def svg(self) -> str:
        self._fit()
        ylabels = self.yticks or [tick_label(v) for v in self.y.ticks()]
        xlabels = self.xticks or [tick_label(v) for v in self.x.ticks()]
        left = 28 + CHAR_W * max(map(len, ylabels), default=1)
        bottom = 40 + (CHAR_W * 0.7 * max(map(len, xlabels), default=1) if self.xticks else 0)
        legend_w = 34 + CHAR_W * max((len(e.label) for e in self._legend), default=0)
        right = self.width - 10 - (legend_w + 8 if self.legend_right else 0)
        top, base = 10, self.height - bottom

        def px(v: float) -> float:
            return left + self.x.frac(v) * (right - left)

        def py(v: float) -> float:
            return base - self.y.frac(v) * (base - top)

        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}" '
               f'viewBox="0 0 {self.width} {self.height}" font-family="DejaVu Sans, Arial, sans-serif" font-size="11">',
               f'<rect width="{self.width}" height="{self.height}" fill="white"/>']
        # Grid and ticks.
        yvalues = range(len(self.yticks)) if self.yticks else self.y.ticks()
        for v, text in zip(yvalues, ylabels):
            y = py(v)
            out.append(f'<line x1="{left:.1f}" x2="{right:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>')
            out.append(f'<text x="{left - 5:.1f}" y="{y + 4:.1f}" text-anchor="end">{escape(text)}</text>')
        xvalues = range(len(self.xticks)) if self.xticks else self.x.ticks()
        for v, text in zip(xvalues, xlabels):
            x = px(v)
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{base:.1f}" y2="{base + 4:.1f}" stroke="#333"/>')
            if self.xticks:
                out.append(f'<text transform="translate({x:.1f},{base + 12:.1f}) rotate(-30)" text-anchor="end" '
                           f'font-size="9">{escape(text)}</text>')
            else:
                out.append(f'<text x="{x:.1f}" y="{base + 16:.1f}" text-anchor="middle">{escape(text)}</text>')
        # Series, clipped to the axes.
        out.append(f'<clipPath id="axes"><rect x="{left:.1f}" y="{top}" width="{right - left:.1f}" '
                   f'height="{base - top:.1f}"/></clipPath><g clip-path="url(#axes)">')
        for item in self._items:
            if item[0] == "rects":
                for x0, x1, y0, y1 in item[1]:
                    if all(map(math.isfinite, (x0, x1, y0, y1))):
                        xa, xb, ya, yb = sorted((px(x0), px(x1))) + sorted((py(y0), py(y1)))
                        out.append(f'<rect x="{xa:.1f}" y="{ya:.1f}" width="{xb - xa:.1f}" height="{yb - ya:.1f}" '
                                   f'fill="{item[2]}"/>')
            elif item[0] == "vline":
                x = px(item[1])
                out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{base:.1f}" stroke="{item[2]}" '
                           f'stroke-dasharray="{item[3]}"/>')
            else:
                _, points, color, dash, marker, opacity = item
                for run in _finite_runs(points):
                    path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in run)
                    out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.5" '
                               f'stroke-dasharray="{dash}" opacity="{opacity}"/>')
                    if marker:
                        out += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{color}"/>' for x, y in run]
        out.append("</g>")
        out.append(f'<rect x="{left:.1f}" y="{top}" width="{right - left:.1f}" height="{base - top:.1f}" '
                   f'fill="none" stroke="#333"/>')
        # Axis labels.
        out.append(f'<text x="{(left + right) / 2:.1f}" y="{self.height - 6}" text-anchor="middle" '
                   f'font-size="12">{escape(self.xlabel)}</text>')
        out.append(f'<text transform="translate(14,{(top + base) / 2:.1f}) rotate(-90)" text-anchor="middle" '
                   f'font-size="12">{escape(self.ylabel)}</text>')
        out += self._legend_svg(right + 8 if self.legend_right else right - legend_w - 6, top + 6, legend_w)
        out.append("</svg>")
        return "".join(out)

    def _legend_svg(self, x: float, y: float, width: float) -> list[str]:
        if not self._legend:
            return []
        out = [f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{8 + 16 * len(self._legend)}" '
               f'fill="white" fill-opacity="0.85" stroke="#ccc"/>']
        for i, e in enumerate(self._legend):
            row = y + 14 + 16 * i
            if e.kind == "box":
                out.append(f'<rect x="{x + 6:.1f}" y="{row - 8:.1f}" width="18" height="9" fill="{e.color}"/>')
            else:
                out.append(f'<line x1="{x + 6:.1f}" x2="{x + 24:.1f}" y1="{row - 4:.1f}" y2="{row - 4:.1f}" '
                           f'stroke="{e.color}" stroke-width="1.5" stroke-dasharray="{e.dash}"/>')
                if e.marker:
                    out.append(f'<circle cx="{x + 15:.1f}" cy="{row - 4:.1f}" r="2.5" fill="{e.color}"/>')
            out.append(f'<text x="{x + 30:.1f}" y="{row:.1f}">{escape(e.label)}</text>')
        return out


def _inverse(scale: Scale, t: float) -> float:
    """The data value at `t` in the scale's linear space (Scale.t's inverse)."""
    if scale.kind == "linear" or abs(t) <= 1:
        return t * (scale.linthresh if scale.kind == "symlog" else 1)
    return math.copysign(scale.linthresh * 10 ** (abs(t) - 1), t)


def _finite_runs(points: list[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """The polyline's pieces between non-finite points (NaN leaves a gap, as matplotlib does)."""
    runs: list[list[tuple[float, float]]] = [[]]
    for p in points:
        if math.isfinite(p[0]) and math.isfinite(p[1]):
            runs[-1].append(p)
        elif runs[-1]:
            runs.append([])
    return [r for r in runs if r]
