"""Reports of ``evaluate-ghn`` and ``rank-ghn``: ``result.json``, ``report.md``, ``scatter.png``.

The scatter plot is drawn by a small rasteriser of its own (numpy, a 5x7 bitmap font) and
encoded as PNG with ``zlib`` and ``struct``: matplotlib is not a dependency of the service, and a
plot of a few hundred points does not need one.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .evaluate import SERVICE_SCORE

# ------------------------------------------------------------------------------------------------
# A raster canvas with a 5x7 font
# ------------------------------------------------------------------------------------------------

# Each glyph is 7 rows of 5 columns, '#' for ink; lower case is drawn as upper case.
_GLYPHS: dict[str, tuple[str, ...]] = {
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "B": ("####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "D": ("###..", "#..#.", "#...#", "#...#", "#...#", "#..#.", "###.."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "F": ("#####", "#....", "#....", "####.", "#....", "#....", "#...."),
    "G": (".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"),
    "H": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "I": (".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "J": ("..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."),
    "K": ("#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "M": ("#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"),
    "N": ("#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"),
    "O": (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "Q": (".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "S": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "U": ("#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "V": ("#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."),
    "W": ("#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."),
    "X": ("#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"),
    "Y": ("#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."),
    "Z": ("#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"),
    ".": (".....", ".....", ".....", ".....", ".....", ".##..", ".##.."),
    ",": (".....", ".....", ".....", ".....", ".##..", "..#..", ".#..."),
    ":": (".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."),
    "-": (".....", ".....", ".....", "#####", ".....", ".....", "....."),
    "=": (".....", ".....", "#####", ".....", "#####", ".....", "....."),
    "/": (".....", "....#", "...#.", "..#..", ".#...", "#....", "....."),
    "(": ("...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#."),
    ")": (".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#..."),
    " ": (".....",) * 7,
}
_FONT = {c: np.array([[ch == "#" for ch in row] for row in rows], dtype=bool)
         for c, rows in _GLYPHS.items()}
GLYPH_W, GLYPH_H = 5, 7

Color = tuple[int, int, int]
BLACK: Color = (0, 0, 0)
GREY: Color = (190, 190, 190)
BLUE: Color = (31, 119, 180)
ORANGE: Color = (230, 110, 20)


def text_mask(text: str, scale: int = 1) -> np.ndarray:
    """Boolean ink of ``text`` in the 5x7 font, one pixel between glyphs; ``(7s, 6s*len-s)``.
    Characters outside the font are drawn as spaces."""
    if not text:
        return np.zeros((GLYPH_H * scale, 0), dtype=bool)
    gap = np.zeros((GLYPH_H, 1), dtype=bool)
    parts: list[np.ndarray] = []
    for i, ch in enumerate(text.upper()):
        if i:
            parts.append(gap)
        parts.append(_FONT.get(ch, _FONT[" "]))
    mask = np.concatenate(parts, axis=1)
    return mask.repeat(scale, axis=0).repeat(scale, axis=1)


class Canvas:
    """An RGB raster, ``(height, width, 3)`` uint8, origin at the top left; drawing clips."""

    def __init__(self, width: int, height: int, background: Color = (255, 255, 255)):
        self.pixels = np.empty((height, width, 3), dtype=np.uint8)
        self.pixels[:] = background

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        """Fills ``[x0, x1) x [y0, y1)``."""
        x0, x1 = max(0, x0), min(self.width, x1)
        y0, y1 = max(0, y0), min(self.height, y1)
        if x0 < x1 and y0 < y1:
            self.pixels[y0:y1, x0:x1] = color

    def mask(self, x: int, y: int, ink: np.ndarray, color: Color) -> None:
        """Paints ``color`` where ``ink`` is true, its top-left corner at ``(x, y)``."""
        h, w = ink.shape
        sx0, sy0 = max(0, -x), max(0, -y)
        sx1, sy1 = min(w, self.width - x), min(h, self.height - y)
        if sx0 < sx1 and sy0 < sy1:
            region = self.pixels[y + sy0:y + sy1, x + sx0:x + sx1]
            region[ink[sy0:sy1, sx0:sx1]] = color

    def disc(self, cx: int, cy: int, r: int, color: Color) -> None:
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        self.mask(cx - r, cy - r, xx * xx + yy * yy <= r * r + r, color)

    def text(self, x: int, y: int, text: str, color: Color = BLACK, scale: int = 1,
             anchor: str = "left", vertical: bool = False) -> None:
        """Draws ``text`` with its top-left corner (``anchor="left"``) or top centre
        (``"center"``) or top right (``"right"``) at ``(x, y)``; ``vertical`` reads bottom to
        top, anchored on its left edge's centre."""
        ink = text_mask(text, scale)
        if vertical:
            ink = np.rot90(ink)
            self.mask(x, y - ink.shape[0] // 2, ink, color)
            return
        w = ink.shape[1]
        x0 = {"left": x, "center": x - w // 2, "right": x - w}[anchor]
        self.mask(x0, y, ink, color)


def encode_png(pixels: np.ndarray) -> bytes:
    """An 8-bit RGB PNG (one IDAT chunk, no interlacing) of a ``(height, width, 3)`` uint8 array.

    Layout per the PNG specification: the 8-byte signature, then chunks of ``length (4 bytes,
    big-endian) | type | data | CRC-32 of type and data``: IHDR, IDAT (zlib stream of the rows,
    each prefixed by filter type 0), IEND.
    """
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"need (H, W, 3) uint8 pixels, got {pixels.shape} {pixels.dtype}")
    h, w, _ = pixels.shape
    rows = np.concatenate([np.zeros((h, 1), np.uint8), pixels.reshape(h, w * 3)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits, RGB, deflate, no filter/lace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(np.ascontiguousarray(rows).tobytes(), 9))
            + chunk(b"IEND", b""))


# ------------------------------------------------------------------------------------------------
# The scatter plot
# ------------------------------------------------------------------------------------------------


def _axis_range(values: Sequence[float]) -> tuple[float, float]:
    """Whole tenths around the data, within [0, 1] for accuracies."""
    if not values:
        return 0.0, 1.0
    lo = math.floor(min(values) * 10) / 10
    hi = math.ceil(max(values) * 10) / 10
    if hi - lo < 0.1:
        lo, hi = lo - 0.05, hi + 0.05
    return max(0.0, lo), min(1.0, hi)


def scatter_png(series: Sequence[tuple[str, Color, Sequence[tuple[float, float]]]], *,
                x_label: str, y_label: str, title: str = "", width: int = 640,
                height: int = 520) -> bytes:
    """A PNG scatter plot of ``series`` (``(legend, colour, [(x, y)])``) with a dashed ``y = x``
    line, six labelled ticks per axis and a legend."""
    c = Canvas(width, height)
    left, right, top, bottom = 80, 20, 50, 70
    x0, x1, y0, y1 = left, width - right, top, height - bottom  # plot area in pixels
    xs = [p[0] for _, _, pts in series for p in pts]
    ys = [p[1] for _, _, pts in series for p in pts]
    xlo, xhi = _axis_range(xs)
    ylo, yhi = _axis_range(ys)

    def px(v: float) -> int:
        return round(x0 + (v - xlo) / (xhi - xlo) * (x1 - x0))

    def py(v: float) -> int:
        return round(y1 - (v - ylo) / (yhi - ylo) * (y1 - y0))

    # y = x, dashed, where both axes overlap.
    lo, hi = max(xlo, ylo), min(xhi, yhi)
    if lo < hi:
        for i, t in enumerate(np.linspace(lo, hi, 600)):
            if (i // 8) % 2 == 0:
                c.rect(px(t), py(t), px(t) + 2, py(t) + 2, GREY)
    c.rect(x0, y1, x1 + 1, y1 + 2, BLACK)  # x axis
    c.rect(x0 - 1, y0, x0 + 1, y1 + 2, BLACK)  # y axis
    for v in np.linspace(xlo, xhi, 6):
        c.rect(px(v), y1 + 2, px(v) + 1, y1 + 7, BLACK)
        c.text(px(v), y1 + 11, f"{v:.2f}", anchor="center")
    for v in np.linspace(ylo, yhi, 6):
        c.rect(x0 - 7, py(v), x0 - 1, py(v) + 1, BLACK)
        c.text(x0 - 10, py(v) - 3, f"{v:.2f}", anchor="right")
    c.text((x0 + x1) // 2, height - 30, x_label, scale=2, anchor="center")
    c.text(10, (y0 + y1) // 2, y_label, scale=2, vertical=True)
    if title:
        c.text(width // 2, 14, title, scale=2, anchor="center")
    for _, color, pts in series:
        for x, y in pts:
            c.disc(px(x), py(y), 3, color)
    ly = y0 + 8
    for legend, color, pts in series:
        if legend and pts:
            c.disc(x0 + 16, ly + 3, 3, color)
            c.text(x0 + 26, ly, legend)
            ly += 14
    if not xs:
        c.text((x0 + x1) // 2, (y0 + y1) // 2, "no data", anchor="center", scale=2)
    return encode_png(c.pixels)


# ------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------


def _sections(result: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    kind = result.get("kind")
    if kind == "evaluation":
        return result, None
    if kind == "ranking":
        return None, result
    evaluation, ranking = result.get("evaluation"), result.get("ranking")
    if evaluation is None and ranking is None:
        raise ValueError("expected an evaluate_ghn or rank_surrogates result, or a dict with "
                         "'evaluation' and/or 'ranking'")
    return evaluation, ranking


def _json_ready(value: Any) -> Any:
    """Non-finite floats become ``None`` (JSON has no NaN); paths and the like become text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _count(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "–"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


_SCORE_TITLES = {
    "predicted_batch": "GHN, batch statistics",
    "predicted_recalibrated": "GHN, recalibrated",
    "predicted_readout": "GHN, recalibrated + readout (the service's score)",
    "ranking_head": "ranking head (service score + size, leave-one-out)",
    "served_ranking_head": "served ranking head (what searches rank by)",
    "random_init": "random init",
    "sgd_1_epoch": "SGD baseline",
    "parameters": "parameter count",
    "flops": "FLOPs (MACs)",
}


def _evaluation_markdown(ev: dict[str, Any]) -> list[str]:
    s = ev.get("settings", {})
    sgd = s.get("sgd_epochs")
    sgd_title = f"SGD {sgd:g} epoch(s)" if sgd is not None else "SGD"
    lines = [f"## Held-out architectures ({len(ev['held_out'])}, {ev.get('split', 'test')} "
             "split)", ""]
    lines.append(f"Seeds 0..{s.get('held_out', 0) - 1} of the spaces "
                 f"{', '.join(s.get('spaces', []))} "
                 f"(at most {_count(s.get('max_parameters'))} parameters, "
                 f"{_count(s.get('max_flops'))} MACs), never trained on; "
                 f"{s.get('eval_images') or 'all'} images scored; recalibration (batch-norm "
                 f"statistics, or activations of networks without batch norm) on "
                 f"{s.get('recalibration')}; "
                 + (f"SGD baseline: {sgd:g} epoch(s) on {s.get('sgd_max_images') or 'all'} "
                    "images per epoch." if sgd is not None else "no SGD baseline."))
    lines.append("")
    summary = ev.get("summary", {}).get("held_out", {})
    rows = []
    for key in ("predicted_batch", "predicted_recalibrated", "predicted_readout", "random_init",
                "sgd_1_epoch"):
        st = summary.get(key)
        title = _SCORE_TITLES[key] if key != "sgd_1_epoch" else sgd_title
        rows.append([title] + ([_fmt(st[k]) for k in ("mean", "median", "min", "max")]
                               if st else ["–"] * 4))
    lines += _table(["score", "mean", "median", "min", "max"], rows)
    by_bn = ev.get("summary", {}).get("held_out_by_batch_norm") or {}
    parts = []
    for side, label in (("with", "with batch norm"), ("without", "without (BN-free)")):
        st = (by_bn.get(side) or {}).get(SERVICE_SCORE)
        if st:
            parts.append(f"{label}: {_fmt(st['mean'])} mean over {st['count']}")
    if parts:
        lines += ["", f"{_SCORE_TITLES[SERVICE_SCORE]}, " + "; ".join(parts) + "."]
    errors = [r for r in ev["held_out"] if "error" in r]
    if errors:
        lines += ["", f"{len(errors)} architecture(s) could not be scored: "
                  + "; ".join(f"{r['name']}: {r['error']}" for r in errors[:5])]
    times = ev.get("summary", {}).get("held_out_seconds", {})
    if times.get("predict_seconds"):
        lines += ["", f"Mean time to predict one architecture's parameters: "
                  f"{times['predict_seconds']['mean'] * 1000:.1f} ms"
                  + (f"; to train it with SGD: {times['sgd_seconds']['mean']:.2f} s"
                     if times.get("sgd_seconds") else "") + "."]
    lines += ["", "## Reference models", ""]
    rows = []
    for r in ev.get("zoo", []):
        if "error" in r:
            rows.append([r["name"], "–", "–", "–", "–", "–", "–", "–",
                         f"error: {r['error']}"])
            continue
        rows.append([r["name"], _count(r.get("parameters")), _count(r.get("flops")),
                     _fmt(r.get("predicted_batch")), _fmt(r.get("predicted_recalibrated")),
                     _fmt(r.get("predicted_readout")), _fmt(r.get("random_init")),
                     _fmt(r.get("sgd_1_epoch")), _fmt(r.get("predict_seconds"), 3)])
    lines += _table(["model", "params", "MACs", "GHN (batch)", "GHN (recal.)",
                     "GHN (readout)", "random init", sgd_title, "predict s"], rows)
    for name, why in ev.get("zoo_skipped", {}).items():
        lines.append(f"\n*{name} skipped: {why}.*")
    return lines


def _ranking_markdown(rk: dict[str, Any]) -> list[str]:
    p = rk.get("protocol", {})
    gt = rk.get("ground_truth", {})
    n = len(rk.get("architectures", []))
    lines = ["## Ranking the held-out architectures", "",
             f"Ground truth: test accuracy ({p.get('truth_eval_images') or 'all'} images) after "
             f"{p.get('epochs')} epoch(s) of SGD (batch {p.get('batch_size')}, lr {p.get('lr')}, "
             f"cosine) on {p.get('max_images') or 'all'} training images per epoch, for {n} "
             f"architectures (best {_fmt(gt.get('best'))}, mean {_fmt(gt.get('mean'))}, "
             f"{_fmt(gt.get('seconds_per_architecture'), 1)} s each). Cheap scores on the "
             f"validation split ({p.get('eval_images') or 'all'} images). Top-1 rank: where the "
             "architecture the score ranks first lands by ground truth (1 = best).", ""]
    rows = []
    for key, st in rk.get("scores", {}).items():
        title = _SCORE_TITLES.get(key, key)
        if key == "sgd_1_epoch":
            title = f"SGD {p.get('sgd_epochs_baseline')} epoch(s)"
        rows.append([title, _fmt(st.get("kendall_tau")), _fmt(st.get("spearman_rho")),
                     f"{st.get('top1_rank')} / {n}", _fmt(st.get("top1_regret")),
                     _fmt(st.get("seconds_per_architecture"), 4)])
    lines += _table(["score", "Kendall tau", "Spearman rho", "top-1 rank", "top-1 regret",
                     "seconds / arch"], rows)
    if rk.get("excluded"):
        lines += ["", f"{len(rk['excluded'])} architecture(s) excluded (the GHN cannot predict "
                  "them)."]
    return lines


def _scatter_series(evaluation: dict[str, Any] | None, ranking: dict[str, Any] | None
                    ) -> tuple[list[tuple[str, Color, list[tuple[float, float]]]], str, str, str]:
    if ranking is not None:
        # The score the service ranks by: the served head's estimate when there is one, else
        # a head fit here (leave-one-out), else the score itself.
        scores = ranking.get("scores", {})
        key = next((k for k in ("served_ranking_head", "ranking_head") if scores.get(k)),
                   SERVICE_SCORE)
        pts = [(a["trained_accuracy"], a[key]) for a in ranking.get("architectures", [])
               if a.get("trained_accuracy") is not None and a.get(key) is not None]
        st = ranking.get("scores", {}).get(key, {})
        title = (f"tau {_fmt(st.get('kendall_tau'), 2)}  rho {_fmt(st.get('spearman_rho'), 2)}"
                 f"  n {len(pts)}")
        epochs = ranking.get("protocol", {}).get("epochs")
        y_label = {"served_ranking_head": "served ranking head",
                   "ranking_head": "ranking head (leave-one-out)"}.get(
                       key, "GHN predicted (service score, val)")
        return ([("held-out", BLUE, pts)], f"trained accuracy (test, {epochs} ep)", y_label,
                title)
    assert evaluation is not None

    def points(records: list[dict[str, Any]]) -> list[tuple[float, float]]:
        return [(r["sgd_1_epoch"], r[SERVICE_SCORE]) for r in records
                if r.get("sgd_1_epoch") is not None and r.get(SERVICE_SCORE) is not None]

    epochs = evaluation.get("settings", {}).get("sgd_epochs")
    return ([("held-out", BLUE, points(evaluation["held_out"])),
             ("reference models", ORANGE, points(evaluation.get("zoo", [])))],
            f"SGD accuracy (test, {epochs} ep)", "GHN predicted (service score, test)",
            f"task {evaluation.get('task')}")


def write_report(result: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Writes ``result.json`` (the result, NaN as null), ``report.md`` (held-out summary,
    reference-model table, ranking table, whichever the result holds) and ``scatter.png``
    into ``out_dir`` (created if needed); returns ``{"json", "markdown", "scatter"}`` paths.

    ``result`` is :func:`~nas_service.training.evaluate.evaluate_ghn`'s, or
    :func:`~nas_service.training.ranking.rank_surrogates`'s, or ``{"evaluation": ...,
    "ranking": ...}`` with either or both. The scatter plot shows the GHN's predicted accuracy
    (recalibrated batch norm) against the trained accuracy of the ranking when there is one,
    else against the SGD baseline of the evaluation.
    """
    evaluation, ranking = _sections(result)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "result.json", "markdown": out / "report.md",
             "scatter": out / "scatter.png"}
    paths["json"].write_text(json.dumps(_json_ready(result), indent=2, allow_nan=False) + "\n")

    source = evaluation or ranking
    assert source is not None
    ghn = source.get("ghn", {})
    trained = (f"trained on {ghn.get('task')} for {ghn.get('step')} steps (best validation "
               f"accuracy {_fmt(ghn.get('best_val_accuracy'))})" if ghn.get("step") is not None
               else "without a training record")
    lines = [f"# GHN evaluation: {source.get('task')}", "",
             f"GHN {trained}; {_count(ghn.get('parameters'))} parameters.", ""]
    if evaluation is not None:
        lines += _evaluation_markdown(evaluation) + [""]
    if ranking is not None:
        lines += _ranking_markdown(ranking) + [""]
    lines += ["![predicted vs trained accuracy](scatter.png)", ""]
    paths["markdown"].write_text("\n".join(lines))

    series, x_label, y_label, title = _scatter_series(evaluation, ranking)
    paths["scatter"].write_bytes(scatter_png(series, x_label=x_label, y_label=y_label,
                                             title=title))
    return paths
