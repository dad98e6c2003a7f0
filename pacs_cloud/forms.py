"""Browser forms of the platform pages (tokens, members, institutions, invitations)."""

from __future__ import annotations

from django import forms
from django.conf import settings

from .models import LANGUAGES, CharacterSet, Institution, Role


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the token is for, e.g. the reading workstation.")

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fields["days"] = forms.IntegerField(
            min_value=1,
            max_value=max(1, settings.API_TOKEN_MAX_TTL_HOURS // 24),
            initial=30,
            label="Valid for (days)",
            help_text="The token stops working after this.",
        )


def _role_field(label: str = "Roles") -> forms.MultipleChoiceField:
    return forms.MultipleChoiceField(choices=Role.choices, widget=forms.CheckboxSelectMultiple, label=label)


class MemberCreateForm(forms.Form):
    username = forms.CharField(max_length=150, help_text="What they type to sign in, e.g. nurse@riverside.")
    display_name = forms.CharField(max_length=200, required=False)
    email = forms.EmailField(required=False)
    password = forms.CharField(
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        strip=False,
        help_text="An initial password; give it to the person privately.",
    )
    roles = _role_field()


class AddExistingMemberForm(forms.Form):
    username = forms.CharField(max_length=150, help_text="A user who already has an account, e.g. a visiting reader.")
    role = forms.ChoiceField(choices=Role.choices)


class MemberRolesForm(forms.Form):
    roles = _role_field()


class InstitutionCreateForm(forms.Form):
    """A new institution and its first administrator (the platform administrator's page)."""

    name = forms.CharField(max_length=200, help_text="As its staff write it, e.g. 湖畔县人民医院.")
    slug = forms.SlugField(max_length=50, label="Short name", help_text="Lower case, in usernames and URLs: lakeside.")
    kind = forms.ChoiceField(choices=Institution.Kind.choices, initial=Institution.Kind.HOSPITAL)
    time_zone = forms.CharField(max_length=64, initial="Asia/Shanghai", help_text="An IANA name.")
    character_set = forms.ChoiceField(choices=CharacterSet.choices, initial=CharacterSet.UTF8)
    accession_prefix = forms.CharField(max_length=8, help_text="1–8 capital letters or digits.")
    patient_id_prefix = forms.CharField(max_length=8, required=False, help_text="Blank: the accession prefix.")
    languages = forms.MultipleChoiceField(
        choices=list(LANGUAGES.items()), initial=["zh-Hans", "en"], widget=forms.CheckboxSelectMultiple
    )
    admin_name = forms.CharField(max_length=200, required=False, label="First administrator's name")
    admin_email = forms.EmailField(required=False, label="First administrator's e-mail")


class InviteForm(forms.Form):
    display_name = forms.CharField(max_length=200, required=False, label="Name")
    email = forms.EmailField(required=False)
    roles = _role_field()


class AcceptInvitationForm(forms.Form):
    username = forms.CharField(max_length=150, help_text="What you will type to sign in.")
    display_name = forms.CharField(max_length=200, required=False, label="Your name")
    password = forms.CharField(widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}), strip=False)
    password_again = forms.CharField(
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}), strip=False, label="Password again"
    )

    def clean(self) -> dict:
        data = super().clean() or {}
        if data.get("password") != data.get("password_again"):
            self.add_error("password_again", "The two passwords differ.")
        return data
