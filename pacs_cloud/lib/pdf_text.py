"""Text for reportlab PDFs in Latin and Chinese: the CJK font and mixed-script paragraphs.

Latin text is set in Helvetica; every run of characters Helvetica cannot
print (Chinese findings, a patient's ideographic name, an institution's
Chinese name) is set in the CJK font named by ``REPORTS_PDF_CJK_FONT``,
embedded as a subset, so the PDF prints and its text can be searched and
extracted. Report PDFs and usage statements share it.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from itertools import groupby
from pathlib import Path
from xml.sax.saxutils import escape

from django.conf import settings
from reportlab.lib.styles import ParagraphStyle
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFError, TTFont
from reportlab.platypus import Paragraph

log = logging.getLogger(__name__)


class FontUnavailable(Exception):
    """The configured CJK font cannot be read or embedded."""


@lru_cache(maxsize=4)
def cjk_font(path: str) -> str:
    """Register the TrueType font (or a collection's first face) at ``path``; its name for ``<font name>``.

    reportlab embeds TrueType outlines only: an OpenType font with CFF
    outlines (``.otf``, e.g. Noto Sans CJK) raises :class:`FontUnavailable`.
    """
    if not path or not Path(path).is_file():
        raise FontUnavailable(f"no font file at {path!r}")
    name = f"ReportCJK-{Path(path).stem}"
    try:
        pdfmetrics.registerFont(TTFont(name, path, subfontIndex=0))
    except (TTFError, OSError) as exc:
        raise FontUnavailable(f"{path}: {exc}") from exc
    return name


def cjk_font_name() -> str | None:
    """The configured CJK font's registered name, or None (logged) when it is missing."""
    try:
        return cjk_font(settings.REPORTS_PDF_CJK_FONT)
    except FontUnavailable as exc:
        log.warning("PDF without its CJK font (reports.W001): %s", exc)
        return None


def beyond_helvetica(char: str) -> bool:
    # The standard PDF fonts print WinAnsi (cp1252) only.
    try:
        char.encode("cp1252")
    except UnicodeEncodeError:
        return True
    return False


WIDE = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")


def markup(value: str) -> str:
    """Paragraph markup for plain text: escaped, line breaks kept, non-Latin runs in the CJK font."""
    font = cjk_font_name()
    out = []
    for wide, chars in groupby(value, key=beyond_helvetica):
        chunk = escape("".join(chars)).replace("\n", "<br/>")
        out.append(f'<font name="{font}">{chunk}</font>' if wide and font else chunk)
    return "".join(out)


def paragraph(value: str, style: ParagraphStyle) -> Paragraph:
    """A paragraph of plain text; text with Chinese, Japanese or Korean may break between any two characters."""
    if WIDE.search(value):
        style = ParagraphStyle(f"{style.name}-cjk", parent=style, wordWrap="CJK")
    return Paragraph(markup(value), style)
