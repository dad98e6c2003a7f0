"""An image as readers name it, the same in the viewer, the report editor and the printed report."""

from __future__ import annotations


def image_label(
    series_number: int | None,
    instance_number: int | None,
    *,
    series_description: str = "",
    frame: int | None = None,
    number_of_frames: int = 1,
) -> str:
    """``Series 2 · Image 14``, with ``· Frame 3`` within a multi-frame image.

    The numbers are the image's Series Number (0020,0011) and Instance Number
    (0020,0013); a series without a number goes by its description.
    """
    parts = [f"Series {series_number}" if series_number is not None else series_description or "Series"]
    if instance_number is not None:
        parts.append(f"Image {instance_number}")
    if frame is not None and number_of_frames > 1:
        parts.append(f"Frame {frame}")
    return " · ".join(parts)
