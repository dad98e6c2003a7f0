"""Browser forms of the platform pages (tokens, members)."""

from __future__ import annotations

from django import forms
from django.conf import settings

from .models import Role


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
