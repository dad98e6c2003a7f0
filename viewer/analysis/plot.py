"""A region's curves drawn as a picture: the pixels of the key image a reader saves from the analysis page.

The tissue curve (concentration, else signal) against the left axis and the
arterial input against the right one, each scaled to its own range, as the
page plots them; the title names the region and its curve type.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from django.conf import settings
from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 640, 400
LEFT, RIGHT, TOP, BOTTOM = 70, 70, 48, 52
TISSUE, AIF, AXES, TEXT = (255, 212, 0), (255, 80, 80), (150, 150, 150), (230, 230, 230)


@cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The CJK font of the reports' PDFs (labels may be Chinese), else Pillow's own."""
    try:
        return ImageFont.truetype(settings.REPORTS_PDF_CJK_FONT, size, index=0)
    except OSError:
        return ImageFont.load_default(size)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def curve_picture(results: dict, label: str) -> np.ndarray:
    """(rows, columns, 3) uint8: the region's tissue curve and AIF over time, with axes and a legend."""
    t = np.asarray(results["times_s"], dtype=float)
    if "concentration_mM" in results:
        tissue, tissue_unit = np.asarray(results["concentration_mM"], dtype=float), "mM"
    else:
        tissue, tissue_unit = np.asarray(results["signal"], dtype=float), "signal"
    aif = np.asarray(results["aif_mM"], dtype=float) if results.get("aif_mM") else None
    image = Image.new("RGB", (WIDTH, HEIGHT), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    small, large = _font(13), _font(16)
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP
    t_high = float(t[-1]) if t[-1] > t[0] else float(t[0]) + 1.0

    def x_of(seconds: np.ndarray) -> np.ndarray:
        return x0 + (seconds - t[0]) / (t_high - t[0]) * (x1 - x0)

    def scaled(curve: np.ndarray) -> tuple[np.ndarray, float, float]:
        low, high = min(0.0, float(curve.min())), float(curve.max())
        high = high if high > low else low + 1.0
        return y0 - (curve - low) / (high - low) * (y0 - y1), low, high

    draw.rectangle([x0, y1, x1, y0], outline=AXES)
    for value in _ticks(float(t[0]), t_high):
        x = float(x_of(np.array(value)))
        draw.line([x, y0, x, y0 + 5], fill=AXES)
        draw.text((x, y0 + 8), f"{value:.0f}", fill=TEXT, font=small, anchor="mt")
    draw.text(((x0 + x1) / 2, HEIGHT - 6), "time (s)", fill=TEXT, font=small, anchor="mb")

    y, low, high = scaled(tissue)
    draw.line(list(zip(x_of(t).tolist(), y.tolist(), strict=True)), fill=TISSUE, width=3)
    for value in _ticks(low, high):
        yy = y0 - (value - low) / (high - low) * (y0 - y1)
        draw.text((x0 - 6, yy), f"{value:.3g}", fill=TISSUE, font=small, anchor="rm")
    legend = [(TISSUE, f"region ({tissue_unit})")]
    if aif is not None and np.any(aif):
        y, low, high = scaled(aif)
        draw.line(list(zip(x_of(t).tolist(), y.tolist(), strict=True)), fill=AIF, width=2)
        for value in _ticks(low, high):
            yy = y0 - (value - low) / (high - low) * (y0 - y1)
            draw.text((x1 + 6, yy), f"{value:.3g}", fill=AIF, font=small, anchor="lm")
        legend.append((AIF, "AIF (mM, right axis)"))
    for i, (colour, text) in enumerate(legend):
        draw.line([x0 + 10, y1 + 14 + 18 * i, x0 + 34, y1 + 14 + 18 * i], fill=colour, width=3)
        draw.text((x0 + 40, y1 + 14 + 18 * i), text, fill=TEXT, font=small, anchor="lm")
    curve_type = (results.get("enhancement") or {}).get("curve_type")
    title = f"DCE-MRI {label or 'region'}" + (f" — curve type {curve_type}" if curve_type else "")
    draw.text((WIDTH / 2, 14), title, fill=TEXT, font=large, anchor="mt")
    return np.asarray(image, dtype=np.uint8)
