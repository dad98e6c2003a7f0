"""Browser pages of the platform (home, tokens, members), lockout, health, the push relay and the 403 page."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from . import access, actions, health, push
from . import home as home_panels
from .api import member_or_404
from .forms import (
    AcceptInvitationForm,
    AddExistingMemberForm,
    InstitutionCreateForm,
    MemberCreateForm,
    MemberRolesForm,
    TokenForm,
)
from .models import ApiToken, Institution, Membership, Role, User
from .tenancy import SESSION_KEY, current_institution


@login_required
def home(request: HttpRequest) -> HttpResponse:
    institution = current_institution(request)
    roles = access.roles_at(request.user, institution) if institution else set()
    panels = home_panels.collect(request, institution, roles)
    return render(request, "pacs_cloud/home.html", {"panels": panels})


@login_required
@require_POST
def switch_institution(request: HttpRequest) -> HttpResponse:
    institution = access.access_institution(request.user, request.POST.get("institution", ""))
    request.session[SESSION_KEY] = str(institution.pk)
    return redirect("home")


# API tokens --------------------------------------------------------------


@login_required
def tokens(request: HttpRequest) -> HttpResponse:
    """List the user's tokens; create one (its secret is shown on this response only)."""
    new_key = None
    form = TokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        _, new_key = actions.do_issue_token(
            request.user,  # type: ignore[arg-type]
            name=form.cleaned_data["name"],
            ttl_hours=form.cleaned_data["days"] * 24,
            request=request,
        )
        form = TokenForm()
    rows = ApiToken.objects.filter(user=request.user.pk).order_by("revoked_at", "-created_at")
    response = render(request, "pacs_cloud/tokens.html", {"form": form, "tokens": rows, "new_key": new_key})
    response["Cache-Control"] = "no-store"  # the page may hold a secret
    return response


@login_required
@require_POST
def revoke_token(request: HttpRequest, token_id: Any) -> HttpResponse:
    token = get_object_or_404(ApiToken, pk=token_id, user=request.user)
    if actions.do_revoke_token(token, acting_user=request.user, request=request):  # type: ignore[arg-type]
        messages.success(request, f"Token “{token.name or token.prefix}” revoked.")
    return redirect("pacs_cloud-list-tokens")


# Members (institution administrators) -------------------------------------


def _administered(request: HttpRequest, institution_id: Any) -> Institution:
    return access.access_institution(request.user, institution_id, Role.INSTITUTION_ADMIN)


def _members_url(institution: Institution) -> str:
    return reverse("pacs_cloud-list-members", kwargs={"institution_id": institution.pk})


@login_required
def members(request: HttpRequest, institution_id: Any) -> HttpResponse:
    """Members of one institution, with forms to create a user or add an existing one."""
    institution = _administered(request, institution_id)
    acting: User = request.user  # type: ignore[assignment]
    create_form = MemberCreateForm(request.POST if request.POST.get("form") == "create" else None, prefix="new")
    add_form = AddExistingMemberForm(request.POST if request.POST.get("form") == "add" else None, prefix="add")
    if request.method == "POST":
        try:
            if create_form.is_bound and create_form.is_valid():
                data = create_form.cleaned_data
                member = actions.do_create_member(
                    institution,
                    username=data["username"],
                    password=data["password"],
                    roles=data["roles"],
                    display_name=data["display_name"],
                    email=data["email"],
                    acting_user=acting,
                    request=request,
                )
                messages.success(request, f"{member.username} can now sign in.")
                return redirect(_members_url(institution))
            if add_form.is_bound and add_form.is_valid():
                existing = User.objects.filter(username__iexact=add_form.cleaned_data["username"]).first()
                if existing is None:
                    add_form.add_error("username", "No user has this username.")
                else:
                    actions.do_add_role(
                        institution, existing, add_form.cleaned_data["role"], acting_user=acting, request=request
                    )
                    messages.success(request, f"{existing.username} now works here as well.")
                    return redirect(_members_url(institution))
        except actions.ActionError as exc:
            (create_form if create_form.is_bound else add_form).add_error(None, exc.message)
        except ValidationError as exc:
            create_form.add_error("password", exc)
    rows = (
        Membership.objects.filter(institution=institution)
        .select_related("user")
        .order_by("user__display_name", "user__username", "role")
    )
    people: dict[int, dict[str, Any]] = {}
    for membership in rows:
        entry = people.setdefault(membership.user_id, {"user": membership.user, "roles": [], "active": False})
        entry["roles"].append(membership.get_role_display())
        entry["active"] |= membership.is_active and membership.user.is_active
    return render(
        request,
        "pacs_cloud/members.html",
        {
            "institution": institution,
            "people": list(people.values()),
            "create_form": create_form,
            "add_form": add_form,
        },
    )


@login_required
def member(request: HttpRequest, institution_id: Any, user_uuid: Any) -> HttpResponse:
    """One member: their roles here (editable) and whether they may sign in here."""
    institution = _administered(request, institution_id)
    person = member_or_404(institution, user_uuid)
    rows = list(Membership.objects.filter(institution=institution, user=person))
    form = MemberRolesForm(request.POST or None, initial={"roles": [m.role for m in rows]})
    if request.method == "POST" and form.is_valid():
        try:
            actions.do_set_member_roles(
                institution,
                person,
                form.cleaned_data["roles"],
                acting_user=request.user,  # type: ignore[arg-type]
                request=request,
            )
        except actions.ActionError as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, f"Roles of {person.username} saved.")
            return redirect(_members_url(institution))
    active = person.is_active and any(m.is_active for m in rows)
    return render(
        request,
        "pacs_cloud/member.html",
        {"institution": institution, "person": person, "form": form, "active": active},
    )


@login_required
@require_POST
def set_member_active(request: HttpRequest, institution_id: Any, user_uuid: Any) -> HttpResponse:
    institution = _administered(request, institution_id)
    person = member_or_404(institution, user_uuid)
    active = request.POST.get("active") == "1"
    try:
        actions.do_set_member_active(
            institution,
            person,
            active,
            acting_user=request.user,  # type: ignore[arg-type]
            request=request,
        )
    except actions.ActionError as exc:
        messages.error(request, exc.message)
        return redirect("pacs_cloud-edit-member", institution_id=institution.pk, user_uuid=person.uuid)
    messages.success(request, f"{person.username} {'reactivated' if active else 'deactivated'}.")
    return redirect(_members_url(institution))


# New institutions and invitations ----------------------------------------------------


def invitation_link(request: HttpRequest, token: str) -> str:
    """The link an invited person opens (absolute, for an e-mail or a chat message)."""
    return request.build_absolute_uri(reverse("pacs_cloud-accept-invitation")) + f"?token={token}"


def _no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "no-store"  # the page holds a one-time secret
    return response


@login_required
def create_institution(request: HttpRequest) -> HttpResponse:
    """The platform administrator creates an institution; its first administrator's link is shown once."""
    acting: User = request.user  # type: ignore[assignment]
    if not acting.is_platform_admin:
        raise Http404("No such page")
    form = InstitutionCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            institution, invitation, token = actions.do_create_institution(
                acting_user=acting, request=request, **form.cleaned_data
            )
        except actions.ActionError as exc:
            form.add_error(None, exc.message)
        else:
            context = {"institution": institution, "invitation": invitation, "link": invitation_link(request, token)}
            return _no_store(render(request, "pacs_cloud/institution_created.html", context))
    return render(request, "pacs_cloud/institution_new.html", {"form": form})


def accept_invitation(request: HttpRequest) -> HttpResponse:
    """An invited person sets their username and password; the link then stops working."""
    token = request.POST.get("token") or request.GET.get("token", "")
    try:
        invitation = actions.usable_invitation(token, request=request)
    except actions.ActionError as exc:
        return _no_store(render(request, "pacs_cloud/invitation.html", {"refused": exc.message}, status=404))
    initial = {"username": invitation.email, "display_name": invitation.display_name}
    form = AcceptInvitationForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            user = actions.do_accept_invitation(
                token,
                username=data["username"],
                password=data["password"],
                display_name=data["display_name"],
                request=request,
            )
        except actions.ActionError as exc:
            form.add_error(None, exc.message)
        except ValidationError as exc:
            form.add_error("password", exc)
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            request.session[SESSION_KEY] = str(invitation.institution_id)
            messages.success(request, f"Welcome to {invitation.institution.name}.")
            return redirect("home")
    context = {"invitation": invitation, "form": form, "token": token}
    return _no_store(render(request, "pacs_cloud/invitation.html", context))


# Sign-in lockout, health, push relay ------------------------------------------


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: dict | None = None
) -> HttpResponse:
    """What a locked-out client gets (django-axes ``AXES_LOCKOUT_CALLABLE``): 429 with a reason."""
    minutes = max(1, round(settings.AXES_COOLOFF_TIME * 60))
    message = f"Too many failed sign-in attempts. Try again in {minutes} minutes, or ask your administrator."
    if request.path.startswith(("/api/", "/dicomweb/")):
        response: HttpResponse = JsonResponse({"detail": message}, status=429)
    else:
        response = render(request, "pacs_cloud/locked_out.html", {"message": message}, status=429)
    response["Retry-After"] = str(minutes * 60)
    return response


def healthz(request: HttpRequest) -> JsonResponse:
    """Status of every dependency; 503 when any of them fails (for load balancers)."""
    checks = health.run_checks()
    healthy = all(c["status"] == "ok" for c in checks.values())
    body = {
        "status": "ok" if healthy else "degraded",
        "role": settings.PACS_ROLE,
        "version": settings.PACS_VERSION,
        "checks": checks,
    }
    return JsonResponse(body, status=200 if healthy else 503)


@csrf_exempt
@require_POST
def push_relay(request: HttpRequest) -> HttpResponse:
    """Deliver a push signed by another process of this deployment (see ``push``)."""
    if not push.accept_relay(request.POST.get("token", "")):
        return HttpResponseBadRequest("bad relay token")
    return HttpResponse(status=204)


# Refusals -----------------------------------------------------------------

REFUSED = "You do not have access to this page."


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """The 403 page, in the product's frame with a way home (``handler403``).

    The product raises PermissionDenied with a message meant for the user (which
    role or institution the page needs); Django's own refusals carry none.
    """
    message = str(exception) if exception is not None and str(exception) else REFUSED
    return render(request, "pacs_cloud/403.html", {"message": message}, status=403)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """A form refused for its missing or stale security token (``CSRF_FAILURE_VIEW``)."""
    message = "This form has expired or was sent from another site. Reload the page and try again."
    return render(request, "pacs_cloud/403.html", {"message": message}, status=403)
