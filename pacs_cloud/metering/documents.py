"""A usage statement as CSV (UTF-8 with a BOM, so spreadsheet programs read Chinese names) and as PDF.

The PDF sets Chinese text in the CJK font report PDFs use (``pacs_cloud.lib.pdf_text``).
"""

from __future__ import annotations

import csv
import io
from decimal import Decimal

from django.utils import timezone
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import SimpleDocTemplate, Spacer, Table, TableStyle

from ..lib.local_time import format_local
from ..lib.pdf_text import paragraph
from .statements import Statement

COLUMNS = ["Item", "Description", "Detail", "Quantity", "Unit", "Unit price", "Amount"]


def money(value: Decimal) -> str:
    return f"{value:,.2f}"


def unit_price(value: Decimal) -> str:
    # As many places as the price needs, at least two: 0.0002, 25.00.
    text = f"{value.normalize():f}"
    whole, _, places = text.partition(".")
    return f"{whole}.{places.ljust(2, '0')}"


def quantity(value: Decimal) -> str:
    return f"{value:f}"


def period(statement: Statement) -> str:
    zone = statement.institution.time_zone
    return f"{format_local(statement.starts_at, zone)} – {format_local(statement.ends_at, zone)}"


def statement_csv(statement: Statement) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["Usage statement", statement.institution.name])
    writer.writerow(["Month", statement.label])
    writer.writerow(["Period", period(statement)])
    writer.writerow(["Currency", statement.currency])
    writer.writerow([])
    writer.writerow(COLUMNS)
    for line in statement.lines:
        writer.writerow(
            [
                line.item,
                line.label,
                line.detail,
                quantity(line.quantity),
                line.unit,
                unit_price(line.unit_price),
                f"{line.amount:.2f}",
            ]
        )
    writer.writerow(["total", "Total", "", "", "", "", f"{statement.total:.2f}"])
    return ("\ufeff" + out.getvalue()).encode("utf-8")


def statement_pdf(statement: Statement) -> bytes:
    base = getSampleStyleSheet()
    title = ParagraphStyle("inst", parent=base["Title"], fontSize=16, spaceAfter=2)
    body = ParagraphStyle("p", parent=base["BodyText"], fontSize=10, leading=13)
    cell = ParagraphStyle("c", parent=base["BodyText"], fontSize=9, leading=11)
    small = ParagraphStyle("s", parent=base["BodyText"], fontSize=8, leading=10, textColor=colors.grey)
    zone = statement.institution.time_zone
    rows = [[paragraph(c, cell) for c in COLUMNS[1:]]]
    for line in statement.lines:
        rows.append(
            [
                paragraph(line.label, cell),
                paragraph(line.detail, cell),
                quantity(line.quantity),
                line.unit,
                unit_price(line.unit_price),
                money(line.amount),
            ]
        )
    rows.append([paragraph("Total", cell), "", "", "", statement.currency, money(statement.total)])
    table = Table(rows, colWidths=[45 * mm, 38 * mm, 25 * mm, 22 * mm, 20 * mm, 25 * mm], repeatRows=1)
    table.setStyle(
        TableStyle(
            [
                ("FONTSIZE", (0, 0), (-1, -1), 9),
                ("ALIGN", (2, 1), (-1, -1), "RIGHT"),
                ("LINEBELOW", (0, 0), (-1, 0), 0.6, colors.black),
                ("LINEABOVE", (0, -1), (-1, -1), 0.6, colors.black),
                ("FONTNAME", (0, -1), (-1, -1), "Helvetica-Bold"),
                ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
            ]
        )
    )
    story = [
        paragraph(statement.institution.name, title),
        paragraph(f"Usage statement {statement.label}", body),
        paragraph(f"Period: {period(statement)}", body),
        paragraph(f"Currency: {statement.currency}", body),
        Spacer(1, 6 * mm),
        table,
        Spacer(1, 6 * mm),
        paragraph(f"Total due: {statement.currency} {money(statement.total)}", body),
        paragraph(f"Issued {format_local(timezone.now(), zone)} by Cloud PACS", small),
    ]
    out = io.BytesIO()
    doc = SimpleDocTemplate(
        out,
        pagesize=A4,
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        topMargin=15 * mm,
        bottomMargin=15 * mm,
        title=f"Usage statement {statement.label}",
    )
    doc.build(story)
    return out.getvalue()
