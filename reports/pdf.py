"""The report as a PDF: the institution's header, the sections, key images, the signature block.

Key images are rendered by the viewer's pipeline (``viewer.render``) with the
file's own window, so the PDF shows what the reader saw. The verification
code printed at the foot finds the version and proves which signature it
carries (``/api/v1/reports/verify-code/``).
"""

from __future__ import annotations

import io
import logging
from typing import Any
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Image, KeepTogether, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from archive.models import Instance
from pacs_cloud.templatetags.pacs_cloud import person_name

from .models import Report, ReportVersion

log = logging.getLogger(__name__)

SECTION_TITLES = (("technique", "Technique"), ("findings", "Findings"), ("impression", "Impression"))
KEY_IMAGE_SIZE = 256  # pixels of the longer side


def _styles() -> dict[str, ParagraphStyle]:
    base = getSampleStyleSheet()
    return {
        "inst": ParagraphStyle("inst", parent=base["Title"], fontSize=16, spaceAfter=2),
        "title": ParagraphStyle("t", parent=base["Heading2"], spaceBefore=4, spaceAfter=4),
        "h": ParagraphStyle("h", parent=base["Heading3"], spaceBefore=8, spaceAfter=2),
        "p": ParagraphStyle("p", parent=base["BodyText"], fontSize=10, leading=13),
        "small": ParagraphStyle("s", parent=base["BodyText"], fontSize=8, leading=10, textColor=colors.grey),
    }


def _text(value: str) -> str:
    return escape(value).replace("\n", "<br/>")


def key_image_jpeg(key_image: dict[str, Any], institution_id: Any) -> bytes | None:
    """The rendered frame of one signed key image, or None when it cannot be rendered."""
    from viewer.pixels import RenderError, Viewport
    from viewer.render import RenderParams, render_frame

    instance = Instance.objects.filter(
        sop_instance_uid=key_image["sop_instance_uid"], institution_id=institution_id
    ).first()
    if instance is None:
        return None
    params = RenderParams(quality=85, viewport=Viewport(KEY_IMAGE_SIZE, KEY_IMAGE_SIZE))
    try:
        return render_frame(instance, int(key_image["frame"]), params)
    except (RenderError, OSError, ValueError) as exc:
        log.warning("key image %s not rendered: %s", key_image["sop_instance_uid"], exc)
        return None


def render_pdf(version: ReportVersion) -> bytes:
    report: Report = version.report
    study = report.study
    patient = study.patient
    s = _styles()
    story: list[Any] = [
        Paragraph(_text(report.institution.name), s["inst"]),
        Paragraph("Radiology report", s["title"]),
    ]
    facts = [
        ["Patient", person_name(patient.name) or "—", "Patient ID", patient.patient_id],
        ["Birth date", patient.birth_date.isoformat() if patient.birth_date else "—", "Sex", patient.sex or "—"],
        ["Study", study.description or "—", "Study date", study.study_date.isoformat() if study.study_date else "—"],
        ["Accession", study.accession_number or "—", "Modality", "/".join(study.image_modalities) or "—"],
    ]
    table = Table(facts, colWidths=[25 * mm, 65 * mm, 25 * mm, 55 * mm])
    table.setStyle(
        TableStyle(
            [
                ("FONTSIZE", (0, 0), (-1, -1), 9),
                ("TEXTCOLOR", (0, 0), (0, -1), colors.grey),
                ("TEXTCOLOR", (2, 0), (2, -1), colors.grey),
                ("LINEBELOW", (0, -1), (-1, -1), 0.5, colors.grey),
            ]
        )
    )
    story += [table, Spacer(1, 4 * mm)]
    for key, title in SECTION_TITLES:
        text = version.content.get(key, "")
        if text.strip():
            story += [Paragraph(title, s["h"]), Paragraph(_text(text), s["p"])]
    if version.content.get("addendum", "").strip():
        story += [Paragraph("Addenda", s["h"]), Paragraph(_text(version.content["addendum"]), s["p"])]
    images = []
    for k in version.key_images:
        jpeg = key_image_jpeg(k, report.institution_id)
        if jpeg is None:
            continue
        picture = Image(io.BytesIO(jpeg))
        scale = 60 * mm / max(picture.imageWidth, picture.imageHeight)
        picture.drawWidth, picture.drawHeight = picture.imageWidth * scale, picture.imageHeight * scale
        caption = Paragraph(_text(k.get("note") or f"Frame {k['frame']}"), s["small"])
        images.append([picture, caption])
    if images:
        story.append(Paragraph("Key images", s["h"]))
        cells = [[Table([[img], [cap]]) for img, cap in images[i : i + 3]] for i in range(0, len(images), 3)]
        story.append(Table(cells, hAlign="LEFT"))
    kind = {"preliminary": "Preliminary report", "final": "Final report"}.get(version.kind, f"{version.kind.title()}")
    signature = [
        Paragraph("Electronic signature", s["h"]),
        Paragraph(
            _text(
                f"{kind}, version {version.number}, signed by {version.signer_name} "
                f"on {version.signed_at:%Y-%m-%d %H:%M:%S} UTC."
            ),
            s["p"],
        ),
        Paragraph(_text(f"Verification code: {version.verification_code}"), s["p"]),
        Paragraph(
            _text(
                f"Ed25519 key {version.signing_key.fingerprint[:32]}; signed form SHA-256 {version.canonical_sha256}."
            ),
            s["small"],
        ),
    ]
    story += [Spacer(1, 6 * mm), KeepTogether(signature)]
    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=18 * mm,
        rightMargin=18 * mm,
        topMargin=15 * mm,
        bottomMargin=15 * mm,
        title=f"Report {study.accession_number}",
        author=version.signer_name,
        creator="Cloud PACS",
    )
    doc.build(story)
    return buffer.getvalue()
