"""Forms of the registration desk, the worklist and the reconciliation queue."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast
from zoneinfo import ZoneInfo

from django import forms
from pypinyin import Style, lazy_pinyin

from pacs_cloud.lib.dicom_match import name_groups
from pacs_cloud.models import Institution

from .models import Order, Procedure, Station

# Family names whose reading differs from the character's everyday one; the
# pinyin library reads characters as common words.
SURNAME_READINGS = {
    "单": "shan",
    "曾": "zeng",
    "解": "xie",
    "仇": "qiu",
    "朴": "piao",
    "查": "zha",
    "区": "ou",
    "覃": "qin",
    "乐": "yue",
    "盖": "ge",
    "缪": "miao",
    "秘": "bi",
    "种": "chong",
    "折": "she",
    "翟": "zhai",
    "繁": "po",
    "员": "yun",
    "卜": "bu",
    "召": "shao",
    "长": "chang",
    "尉": "yu",
}


def pinyin(text: str, *, family: bool = False) -> str:
    """Upper-case toneless pinyin of Chinese characters (other text kept), for the alphabetic group."""
    if family and text and text[0] in SURNAME_READINGS:
        return (SURNAME_READINGS[text[0]] + "".join(lazy_pinyin(text[1:], style=Style.NORMAL))).upper()
    return "".join(lazy_pinyin(text, style=Style.NORMAL)).upper()


def person_name(groups: list[tuple[str, str]]) -> str:
    """A DICOM PN from (family, given) per group: alphabetic, ideographic, phonetic (PS3.5 6.2.1.1)."""
    parts = []
    for family, given in groups:
        family, given = (
            family.strip().replace("^", " ").replace("=", " "),
            given.strip().replace("^", " ").replace("=", " "),
        )
        parts.append(f"{family}^{given}" if given else family)
    while parts and not parts[-1]:
        parts.pop()
    return "=".join(parts)


class PatientSearchForm(forms.Form):
    q = forms.CharField(label="Patient ID or name", max_length=100, required=False)


def patient_initial(patient: Any) -> dict[str, Any]:
    """A PatientForm's initial values from a patient record."""
    groups = [(g.split("^") + [""])[:2] for g in name_groups(patient.name)]
    (family, given), (ideo_family, ideo_given), (phon_family, phon_given) = groups
    return {
        "patient_id": "" if patient.issuer.startswith("no-patient-id:") else patient.patient_id,
        "family_name": family,
        "given_name": given,
        "ideographic_family": ideo_family,
        "ideographic_given": ideo_given,
        "phonetic_family": phon_family,
        "phonetic_given": phon_given,
        "birth_date": patient.birth_date,
        "sex": patient.sex if patient.sex in ("M", "F", "O") else "",
    }


class PatientForm(forms.Form):
    """A new patient, with the name in Latin letters (or pinyin), Chinese characters and phonetic form."""

    patient_id = forms.CharField(label="Patient ID", max_length=64, required=False, help_text="Blank: issue one")
    family_name = forms.CharField(label="Family name (Latin/pinyin)", max_length=64, required=False)
    given_name = forms.CharField(label="Given name (Latin/pinyin)", max_length=64, required=False)
    ideographic_family = forms.CharField(label="Family name (汉字)", max_length=64, required=False)
    ideographic_given = forms.CharField(label="Given name (汉字)", max_length=64, required=False)
    phonetic_family = forms.CharField(label="Family name (phonetic)", max_length=64, required=False)
    phonetic_given = forms.CharField(label="Given name (phonetic)", max_length=64, required=False)
    birth_date = forms.DateField(label="Birth date", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    sex = forms.ChoiceField(
        label="Sex", choices=[("", "—"), ("F", "Female"), ("M", "Male"), ("O", "Other")], required=False
    )
    allow_possible_duplicate = forms.BooleanField(
        label="This is a different person: register anyway", required=False, widget=forms.HiddenInput
    )

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if not data.get("family_name") and data.get("ideographic_family"):
            # Modalities often show only Latin letters: fill the alphabetic group with pinyin.
            data["family_name"] = pinyin(data["ideographic_family"], family=True)
            data["given_name"] = data.get("given_name") or pinyin(data.get("ideographic_given", ""))
        if not data.get("family_name") and not data.get("ideographic_family"):
            raise forms.ValidationError("Give the family name, in Latin letters or in Chinese characters.")
        data["name"] = person_name(
            [
                (data.get("family_name", "").upper(), data.get("given_name", "").upper()),
                (data.get("ideographic_family", ""), data.get("ideographic_given", "")),
                (data.get("phonetic_family", ""), data.get("phonetic_given", "")),
            ]
        )
        return data


class ProcedureChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return f"{obj.modality} · {obj.name} ({obj.code}, {obj.duration_minutes} min)"


class StationChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return f"{obj.name} — {obj.modality} ({obj.node.ae_title})"


class NodeChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return f"{obj.ae_title} {obj.description}".strip()


class OrderForm(forms.Form):
    """An exam: what, where, when, how urgent and why. Times are the institution's local time."""

    procedure = ProcedureChoiceField(queryset=Procedure.objects.none())
    station = StationChoiceField(queryset=Station.objects.none())
    scheduled_date = forms.DateField(label="Date", widget=forms.DateInput(attrs={"type": "date"}))
    scheduled_time = forms.TimeField(label="Time", widget=forms.TimeInput(attrs={"type": "time"}))
    priority = forms.ChoiceField(choices=Order.Priority.choices, initial=Order.Priority.ROUTINE)
    referring_physician = forms.CharField(
        label="Referring physician", max_length=200, required=False, help_text="e.g. LI^YISHENG=李^医生"
    )
    clinical_info = forms.CharField(
        label="Clinical information", widget=forms.Textarea(attrs={"rows": 3}), required=False
    )

    def __init__(self, *args: Any, institution: Institution, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.institution = institution
        self.procedure_field = cast(forms.ModelChoiceField, self.fields["procedure"])
        self.station_field = cast(forms.ModelChoiceField, self.fields["station"])
        self.procedure_field.queryset = Procedure.objects.filter(institution=institution, is_active=True)
        self.station_field.queryset = Station.objects.filter(institution=institution, is_active=True).select_related(
            "node"
        )

    def modalities(self) -> dict[str, dict[str, str]]:
        """Procedure and station modalities, for the page script that offers matching stations."""
        return {
            "procedures": {str(p.pk): p.modality for p in self.procedure_field.queryset or []},
            "stations": {str(s.pk): s.modality for s in self.station_field.queryset or []},
        }

    def scheduled_at(self) -> dt.datetime:
        data = self.cleaned_data
        return dt.datetime.combine(
            data["scheduled_date"], data["scheduled_time"], tzinfo=ZoneInfo(self.institution.time_zone)
        )

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        procedure, station = data.get("procedure"), data.get("station")
        if procedure and station and procedure.modality != station.modality:
            self.add_error(
                "station",
                f"{procedure.name} is a {procedure.modality} procedure; choose a {procedure.modality} station.",
            )
        return data


class ReasonForm(forms.Form):
    reason = forms.CharField(label="Reason", max_length=1000, widget=forms.TextInput(attrs={"required": True}))


class DismissForm(forms.Form):
    note = forms.CharField(label="Why this study needs no order", max_length=1000)


class LinkForm(forms.Form):
    order = forms.UUIDField(widget=forms.HiddenInput)


class ProcedureForm(forms.ModelForm):
    class Meta:
        model = Procedure
        fields = ["code", "coding_scheme", "name", "modality", "body_part", "duration_minutes", "is_active"]

    def __init__(self, *args: Any, institution: Institution, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.institution = institution

    def clean_code(self) -> str:
        code = self.cleaned_data["code"].strip()
        clash = Procedure.objects.filter(institution=self.institution, code=code).exclude(pk=self.instance.pk)
        if clash.exists():
            raise forms.ValidationError("This code is already in the catalogue.")
        return code

    def clean_modality(self) -> str:
        return self.cleaned_data["modality"].strip().upper()


class StationForm(forms.ModelForm):
    class Meta:
        model = Station
        fields = ["node", "name", "modality", "location", "character_set", "is_active"]
        labels = {"node": "DICOM node (AE title)"}
        field_classes = {"node": NodeChoiceField}

    def __init__(self, *args: Any, institution: Institution, **kwargs: Any) -> None:
        from archive.models import DicomNode

        super().__init__(*args, **kwargs)
        self.institution = institution
        taken = Station.objects.exclude(pk=self.instance.pk).values("node_id")
        node_field = cast(forms.ModelChoiceField, self.fields["node"])
        node_field.queryset = DicomNode.objects.filter(institution=institution).exclude(pk__in=taken)

    def clean_modality(self) -> str:
        return self.cleaned_data["modality"].strip().upper()
