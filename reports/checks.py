"""Configuration problems of reports, reported by ``manage.py check``."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Warning, register


@register()
def check_pdf_font(app_configs: Any, **kwargs: Any) -> list[Warning]:
    from pacs_cloud.lib.pdf_text import FontUnavailable, cjk_font

    try:
        cjk_font(settings.REPORTS_PDF_CJK_FONT)
    except FontUnavailable as exc:
        return [
            Warning(
                f"Report PDFs cannot print Chinese text: {exc}",
                hint="Install the Debian package fonts-wqy-zenhei, or set REPORTS_PDF_CJK_FONT "
                "to a TrueType font (.ttf, or .ttc: its first face) with CJK glyphs.",
                id="reports.W001",
            )
        ]
    return []
