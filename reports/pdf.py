"""The report as a PDF: the institution's header, the sections, key images, the signature block.

Key images are rendered by the viewer's pipeline (``viewer.render``) with the
file's own window, so the PDF shows what the reader saw. The verification
code printed at the foot finds the version and proves which signature it
carries (``/api/v1/reports/verify-code/``).

Latin text is set in Helvetica; every run of characters Helvetica cannot
print (Chinese findings, the patient's ideographic name) is set in the CJK
font named by ``REPORTS_PDF_CJK_FONT``, embedded as a subset, so the PDF
prints and its text can be searched and extracted (reports.W001 warns when
the font is missing); the font machinery is ``pacs_cloud.lib.pdf_text``.
"""

from __future__ import annotations

import io
import logging
from typing import Any

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Image, KeepTogether, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from archive.models import Instance
from pacs_cloud.lib.image_labels import image_label
from pacs_cloud.lib.local_time import format_local
from pacs_cloud.lib.pdf_text import markup, paragraph
from pacs_cloud.lib.person_names import display_name

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
        "cell": ParagraphStyle("c", parent=base["BodyText"], fontSize=9, leading=11),
        "label": ParagraphStyle("l", parent=base["BodyText"], fontSize=9, leading=11, textColor=colors.grey),
    }


_text = markup
_para = paragraph


def key_image_jpeg(key_image: dict[str, Any], instance: Instance) -> bytes | None:
    """The rendered frame of one signed key image, or None when it cannot be rendered."""
    from viewer.pixels import RenderError, Viewport
    from viewer.render import RenderParams, render_frame

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
        _para(report.institution.name, s["inst"]),
        Paragraph("Radiology report", s["title"]),
    ]
    facts = [
        ["Patient", display_name(patient.name) or "—", "Patient ID", patient.patient_id],
        ["Birth date", patient.birth_date.isoformat() if patient.birth_date else "—", "Sex", patient.sex or "—"],
        ["Study", study.description or "—", "Study date", study.study_date.isoformat() if study.study_date else "—"],
        ["Accession", study.accession_number or "—", "Modality", "/".join(study.image_modalities) or "—"],
    ]
    # Labels in grey, values in black; both are paragraphs so a Chinese name prints in the CJK font.
    cells = [[_para(text, s["cell" if column % 2 else "label"]) for column, text in enumerate(row)] for row in facts]
    table = Table(cells, colWidths=[25 * mm, 65 * mm, 25 * mm, 55 * mm])
    table.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LINEBELOW", (0, -1), (-1, -1), 0.5, colors.grey),
            ]
        )
    )
    story += [table, Spacer(1, 4 * mm)]
    for key, title in SECTION_TITLES:
        text = version.content.get(key, "")
        if text.strip():
            story += [Paragraph(title, s["h"]), _para(text, s["p"])]
    if version.content.get("addendum", "").strip():
        story += [Paragraph("Addenda", s["h"]), _para(version.content["addendum"], s["p"])]
    images = []
    instances = {
        i.sop_instance_uid: i
        for i in Instance.objects.filter(
            sop_instance_uid__in=[k["sop_instance_uid"] for k in version.key_images],
            institution_id=report.institution_id,
        ).select_related("series")
    }
    for k in version.key_images:
        instance = instances.get(k["sop_instance_uid"])
        jpeg = key_image_jpeg(k, instance) if instance is not None else None
        if instance is None or jpeg is None:
            continue
        picture = Image(io.BytesIO(jpeg))
        scale = 60 * mm / max(picture.imageWidth, picture.imageHeight)
        picture.drawWidth, picture.drawHeight = picture.imageWidth * scale, picture.imageHeight * scale
        # Without a note, the image is named as the viewer names it ("Series 2 · Image 14").
        label = image_label(
            instance.series.series_number,
            instance.instance_number,
            series_description=instance.series.description,
            frame=int(k["frame"]),
            number_of_frames=instance.number_of_frames,
        )
        caption = _para(k.get("note") or label, s["small"])
        images.append([picture, caption])
    if images:
        story.append(Paragraph("Key images", s["h"]))
        cells = [[Table([[img], [cap]]) for img, cap in images[i : i + 3]] for i in range(0, len(images), 3)]
        story.append(Table(cells, hAlign="LEFT"))
    kind = {"preliminary": "Preliminary report", "final": "Final report"}.get(version.kind, f"{version.kind.title()}")
    signature = [
        Paragraph("Electronic signature", s["h"]),
        _para(
            f"{kind}, version {version.number}, signed by {version.signer_name} "
            f"on {format_local(version.signed_at, report.institution.time_zone, seconds=True)}.",
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
