"""REST API of the platform: tokens, institutions, members and memberships.

Every queryset here starts from the caller (their tokens, their institutions,
the memberships of institutions they administer), so another institution's
rows answer 404 exactly as missing ones do.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.contrib.auth import authenticate
from django.contrib.auth.password_validation import password_validators_help_texts
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from . import access, actions
from .models import LANGUAGES, ApiToken, CharacterSet, Institution, Invitation, Membership, Role, User

# Tokens -------------------------------------------------------------------


class TokenLifetimeSerializer(serializers.Serializer):
    ttl_hours = serializers.IntegerField(
        required=False,
        min_value=1,
        help_text="Validity in hours; the default and the longest allowed are settings of the deployment.",
    )

    def validate_ttl_hours(self, value: int) -> int:
        if value > settings.API_TOKEN_MAX_TTL_HOURS:
            raise serializers.ValidationError(f"At most {settings.API_TOKEN_MAX_TTL_HOURS} hours.")
        return value


class TokenRequestSerializer(TokenLifetimeSerializer):
    username = serializers.CharField()
    password = serializers.CharField(style={"input_type": "password"}, trim_whitespace=False)
    name = serializers.CharField(required=False, max_length=100, default="api")


class ApiTokenSerializer(serializers.ModelSerializer):
    is_usable = serializers.BooleanField(read_only=True)

    class Meta:
        model = ApiToken
        fields = ["id", "name", "prefix", "created_at", "expires_at", "revoked_at", "last_used_at", "is_usable"]
        read_only_fields = fields


class NewTokenSerializer(ApiTokenSerializer):
    token = serializers.CharField(read_only=True, help_text="The secret; shown only in this response.")

    class Meta(ApiTokenSerializer.Meta):
        fields = ["token", *ApiTokenSerializer.Meta.fields]
        read_only_fields = fields


class TokenCreateSerializer(TokenLifetimeSerializer):
    name = serializers.CharField(max_length=100)


def _new_token_response(token: ApiToken, key: str) -> Response:
    body = NewTokenSerializer(token).data
    body["token"] = key
    return Response(body, status=status.HTTP_201_CREATED)


class TokenView(APIView):
    """Exchange a username and password for a bearer token.

    Failed attempts count towards the account's lockout; a locked account gets
    429 until the cool-off ends, even with the right password.
    """

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="auth_token_create",
        request=TokenRequestSerializer,
        responses={
            201: NewTokenSerializer,
            401: OpenApiResponse(description="Wrong username or password"),
            429: OpenApiResponse(description="Locked after repeated failures"),
        },
    )
    def post(self, request: Request) -> Response:
        form = TokenRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        user = authenticate(request._request, username=data["username"], password=data["password"])
        if user is None:
            return Response({"detail": "Invalid username or password."}, status=status.HTTP_401_UNAUTHORIZED)
        token, key = actions.do_issue_token(
            user, name=data["name"], ttl_hours=data.get("ttl_hours"), request=request._request
        )
        return _new_token_response(token, key)


@extend_schema_view(
    list=extend_schema(summary="Your API tokens (never their secrets)"),
    retrieve=extend_schema(summary="One of your API tokens"),
    create=extend_schema(
        summary="Create another token for yourself", request=TokenCreateSerializer, responses={201: NewTokenSerializer}
    ),
    destroy=extend_schema(summary="Revoke one of your tokens (it stays listed as revoked)"),
)
class ApiTokenViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = ApiTokenSerializer
    permission_classes = [IsAuthenticated]

    def get_queryset(self) -> QuerySet[ApiToken]:
        return ApiToken.objects.filter(user=self.request.user).select_related("user")

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        form = TokenCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        token, key = actions.do_issue_token(
            request.user,
            name=form.validated_data["name"],
            ttl_hours=form.validated_data.get("ttl_hours"),
            request=request._request,
        )
        return _new_token_response(token, key)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        actions.do_revoke_token(self.get_object(), acting_user=request.user, request=request._request)
        return Response(status=status.HTTP_204_NO_CONTENT)


# Institutions ----------------------------------------------------------------


class InstitutionRefSerializer(serializers.Serializer):
    """An institution as other resources name it (a referral's two sides, a share's receiver)."""

    id = serializers.UUIDField()
    name = serializers.CharField()


class InstitutionSerializer(serializers.ModelSerializer):
    my_roles = serializers.SerializerMethodField()

    class Meta:
        model = Institution
        fields = [
            "id",
            "slug",
            "name",
            "kind",
            "accession_prefix",
            "patient_id_prefix",
            "patient_id_issuer",
            "time_zone",
            "character_set",
            "languages",
            "is_active",
            "my_roles",
        ]
        read_only_fields = fields

    def get_my_roles(self, institution: Institution) -> list[str]:
        roles = self.context.get("roles_by_institution", {})
        return sorted(roles.get(institution.pk, ()))


def visible_institutions(user: Any) -> QuerySet[Institution]:
    """The institutions ``user`` belongs to; every institution for a platform administrator."""
    if getattr(user, "is_platform_admin", False) and user.is_active:
        return Institution.objects.all()
    return Institution.objects.filter(pk__in=access.institution_ids(user))


class InstitutionCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    slug = serializers.SlugField(max_length=50, help_text="Short name, lower case, e.g. lakeside.")
    kind = serializers.ChoiceField(choices=Institution.Kind.choices, default=Institution.Kind.HOSPITAL)
    time_zone = serializers.CharField(max_length=64, default="Asia/Shanghai")
    character_set = serializers.ChoiceField(choices=CharacterSet.choices, default=CharacterSet.UTF8)
    accession_prefix = serializers.CharField(max_length=8)
    patient_id_prefix = serializers.CharField(max_length=8, required=False, default="", allow_blank=True)
    languages = serializers.ListField(
        child=serializers.ChoiceField(choices=list(LANGUAGES.items())), default=["zh-Hans", "en"], allow_empty=False
    )
    admin_name = serializers.CharField(max_length=200, required=False, default="", allow_blank=True)
    admin_email = serializers.EmailField(required=False, default="", allow_blank=True)


class InvitationSerializer(serializers.ModelSerializer):
    institution = serializers.UUIDField(source="institution_id", read_only=True)
    state = serializers.CharField(read_only=True, help_text="open, accepted or expired")

    class Meta:
        model = Invitation
        fields = ["id", "institution", "email", "display_name", "roles", "created_at", "expires_at", "state"]
        read_only_fields = fields


class NewInvitationSerializer(InvitationSerializer):
    link = serializers.URLField(read_only=True, help_text="The one-time link; shown only in this response.")

    class Meta(InvitationSerializer.Meta):
        fields = [*InvitationSerializer.Meta.fields, "link"]
        read_only_fields = fields


class NewInstitutionSerializer(serializers.Serializer):
    institution = InstitutionSerializer(read_only=True)
    invitation = NewInvitationSerializer(read_only=True, help_text="For the first administrator.")


def _invitation_body(request: Request, invitation: Invitation, token: str) -> dict[str, Any]:
    from .views import invitation_link

    return {**InvitationSerializer(invitation).data, "link": invitation_link(request._request, token)}


@extend_schema_view(
    list=extend_schema(summary="Institutions you belong to (a platform administrator sees all of them)"),
    create=extend_schema(
        summary="Create an institution and invite its first administrator (platform administrators)",
        request=InstitutionCreateSerializer,
        responses={201: NewInstitutionSerializer},
    ),
)
class InstitutionViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Institutions you belong to (a platform administrator sees all of them)."""

    serializer_class = InstitutionSerializer

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        if not getattr(request.user, "is_platform_admin", False):
            raise PermissionDenied("Only a platform administrator creates institutions.")
        form = InstitutionCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        try:
            institution, invitation, token = actions.do_create_institution(
                acting_user=request.user, request=request._request, **form.validated_data
            )
        except actions.ActionError as exc:
            raise _action_error(exc) from None
        body = {
            "institution": InstitutionSerializer(institution, context=self.get_serializer_context()).data,
            "invitation": _invitation_body(request, invitation, token),
        }
        return Response(body, status=status.HTTP_201_CREATED)

    def get_queryset(self) -> QuerySet[Institution]:
        return visible_institutions(self.request.user)

    def get_serializer_context(self) -> dict[str, Any]:
        roles: dict[Any, set[str]] = {}
        for institution_id, role in access.memberships(self.request.user).values_list("institution_id", "role"):
            roles.setdefault(institution_id, set()).add(role)
        return {**super().get_serializer_context(), "roles_by_institution": roles}


# Members and memberships ---------------------------------------------------------


class MembershipSerializer(serializers.ModelSerializer):
    institution = serializers.UUIDField(source="institution_id")
    institution_name = serializers.CharField(source="institution.name", read_only=True)
    user = serializers.UUIDField(source="user.uuid", read_only=True)
    username = serializers.CharField(source="user.username")
    display_name = serializers.CharField(source="user.display_name", read_only=True)

    class Meta:
        model = Membership
        fields = [
            "id",
            "institution",
            "institution_name",
            "user",
            "username",
            "display_name",
            "role",
            "is_active",
            "created_at",
        ]
        read_only_fields = ["id", "created_at"]


class MembershipUpdateSerializer(serializers.Serializer):
    is_active = serializers.BooleanField()


def administered_institution_ids(user: Any) -> set[Any]:
    return access.institution_ids(user, [Role.INSTITUTION_ADMIN])


def visible_memberships(user: Any) -> QuerySet[Membership]:
    """The caller's own memberships and every membership at institutions they administer."""
    if not getattr(user, "is_authenticated", False):
        return Membership.objects.none()
    return (
        Membership.objects.filter(institution_id__in=administered_institution_ids(user))
        | Membership.objects.filter(user=user)
    ).select_related("user", "institution")


def _action_error(exc: Exception) -> ValidationError:
    if isinstance(exc, DjangoValidationError):
        return ValidationError({"password": exc.messages})
    return ValidationError({"detail": getattr(exc, "message", str(exc))})


@extend_schema_view(
    list=extend_schema(summary="Your memberships and those of the institutions you administer"),
    create=extend_schema(summary="Give an existing user a role at an institution you administer"),
    partial_update=extend_schema(
        summary="Suspend or restore a membership", request=MembershipUpdateSerializer, responses=MembershipSerializer
    ),
    destroy=extend_schema(summary="Take a role away"),
)
class MembershipViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = MembershipSerializer
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self) -> QuerySet[Membership]:
        queryset = visible_memberships(self.request.user).order_by("institution__name", "user__username", "role")
        institution = self.request.query_params.get("institution")
        if institution:
            try:
                queryset = queryset.filter(institution_id=uuid.UUID(institution))
            except ValueError:
                raise ValidationError({"institution": "Not a UUID."}) from None
        return queryset

    def _administered(self, institution_id: Any) -> Institution:
        if institution_id not in administered_institution_ids(self.request.user):
            raise PermissionDenied("Only an administrator of this institution may change its members.")
        return Institution.objects.get(pk=institution_id)

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        form = self.get_serializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        institution = self._administered(data["institution_id"])
        member = User.objects.filter(username__iexact=data["user"]["username"]).first()
        if member is None:
            raise ValidationError({"username": "No such user."})
        try:
            membership = actions.do_add_role(
                institution, member, data["role"], acting_user=request.user, request=request._request
            )
        except actions.ActionError as exc:
            raise _action_error(exc) from None
        return Response(self.get_serializer(membership).data, status=status.HTTP_201_CREATED)

    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        membership = self.get_object()
        institution = self._administered(membership.institution_id)
        form = MembershipUpdateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        try:
            actions.do_set_member_active(
                institution,
                membership.user,
                form.validated_data["is_active"],
                acting_user=request.user,
                request=request._request,
            )
        except actions.ActionError as exc:
            raise _action_error(exc) from None
        membership.refresh_from_db()
        return Response(self.get_serializer(membership).data)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        membership = self.get_object()
        self._administered(membership.institution_id)
        try:
            actions.do_remove_role(membership, acting_user=request.user, request=request._request)
        except actions.ActionError as exc:
            raise _action_error(exc) from None
        return Response(status=status.HTTP_204_NO_CONTENT)


class MemberSerializer(serializers.ModelSerializer):
    """A member as listed: their account and their roles at this institution."""

    id = serializers.UUIDField(source="uuid", read_only=True)
    roles = serializers.SerializerMethodField()
    is_active = serializers.SerializerMethodField()

    class Meta:
        model = User
        fields = ["id", "username", "display_name", "email", "roles", "is_active"]
        read_only_fields = fields

    def _rows(self, user: User) -> list[Membership]:
        return self.context["rows"].get(user.pk, [])

    def get_roles(self, user: User) -> list[str]:
        return sorted(m.role for m in self._rows(user))

    def get_is_active(self, user: User) -> bool:
        return user.is_active and any(m.is_active for m in self._rows(user))


class MemberCreateSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    display_name = serializers.CharField(max_length=200, required=False, default="")
    email = serializers.EmailField(required=False, default="")
    password = serializers.CharField(
        write_only=True,
        trim_whitespace=False,
        style={"input_type": "password"},
        help_text=" ".join(password_validators_help_texts()),
    )
    roles = serializers.ListField(child=serializers.ChoiceField(choices=Role.choices), allow_empty=False)


@extend_schema_view(
    list=extend_schema(summary="Members of an institution you administer"),
    create=extend_schema(
        summary="Create a user account with roles at an institution you administer",
        request=MemberCreateSerializer,
        responses={201: MemberSerializer},
    ),
)
class MemberViewSet(mixins.ListModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet):
    serializer_class = MemberSerializer

    def institution(self) -> Institution:
        return access.access_institution(self.request.user, self.kwargs["institution_id"], Role.INSTITUTION_ADMIN)

    def get_queryset(self) -> QuerySet[User]:
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return User.objects.none()
        institution = self.institution()
        return User.objects.filter(memberships__institution=institution).distinct().order_by("username")

    def get_serializer_context(self) -> dict[str, Any]:
        rows: dict[int, list[Membership]] = {}
        if "institution_id" in self.kwargs and not getattr(self, "swagger_fake_view", False):
            for membership in Membership.objects.filter(institution=self.institution()):
                rows.setdefault(membership.user_id, []).append(membership)
        return {**super().get_serializer_context(), "rows": rows}

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        institution = self.institution()
        form = MemberCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        try:
            member = actions.do_create_member(
                institution,
                username=data["username"],
                password=data["password"],
                roles=data["roles"],
                display_name=data["display_name"],
                email=data["email"],
                acting_user=request.user,
                request=request._request,
            )
        except (actions.ActionError, DjangoValidationError) as exc:
            raise _action_error(exc) from None
        return Response(self.get_serializer(member).data, status=status.HTTP_201_CREATED)


def member_or_404(institution: Institution, user_uuid: Any) -> User:
    """A user holding any role (active or not) at ``institution``."""
    return get_object_or_404(User.objects.filter(memberships__institution=institution).distinct(), uuid=user_uuid)


# Invitations -------------------------------------------------------------------------


class InvitationCreateSerializer(serializers.Serializer):
    institution = serializers.UUIDField()
    roles = serializers.ListField(child=serializers.ChoiceField(choices=Role.choices), allow_empty=False)
    email = serializers.EmailField(required=False, default="", allow_blank=True)
    display_name = serializers.CharField(max_length=200, required=False, default="", allow_blank=True)


@extend_schema_view(
    list=extend_schema(summary="Invitations of the institutions you administer (never their links)"),
    retrieve=extend_schema(summary="One invitation"),
    create=extend_schema(
        summary="Invite someone to an institution you administer; the one-time link is in this answer only",
        request=InvitationCreateSerializer,
        responses={201: NewInvitationSerializer},
    ),
)
class InvitationViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    serializer_class = InvitationSerializer
    permission_classes = [access.IsInstitutionAdmin]

    def get_queryset(self) -> QuerySet[Invitation]:
        return Invitation.objects.filter(institution_id__in=administered_institution_ids(self.request.user))

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        form = InvitationCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        if data["institution"] not in administered_institution_ids(request.user):
            raise PermissionDenied("Only an administrator of this institution may invite to it.")
        try:
            invitation, token = actions.do_invite(
                Institution.objects.get(pk=data["institution"]),
                roles=data["roles"],
                email=data["email"],
                display_name=data["display_name"],
                acting_user=request.user,
                request=request._request,
            )
        except actions.ActionError as exc:
            raise _action_error(exc) from None
        return Response(_invitation_body(request, invitation, token), status=status.HTTP_201_CREATED)


class AcceptInvitationSerializer(serializers.Serializer):
    token = serializers.CharField(trim_whitespace=False)
    username = serializers.CharField(max_length=150)
    display_name = serializers.CharField(max_length=200, required=False, default="", allow_blank=True)
    password = serializers.CharField(
        write_only=True,
        trim_whitespace=False,
        style={"input_type": "password"},
        help_text=" ".join(password_validators_help_texts()),
    )


class AcceptedInvitationSerializer(serializers.Serializer):
    username = serializers.CharField()
    institution = InstitutionRefSerializer()
    roles = serializers.ListField(child=serializers.ChoiceField(choices=Role.choices))


class AcceptInvitationView(APIView):
    """Accept an invitation: the account is created with its roles and the link stops working.

    A wrong, used or expired token is refused (404), and the refusal audited.
    """

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="invitation_accept",
        request=AcceptInvitationSerializer,
        responses={
            201: AcceptedInvitationSerializer,
            400: OpenApiResponse(description="Username taken or password refused"),
            404: OpenApiResponse(description="Wrong, used or expired invitation"),
        },
    )
    def post(self, request: Request) -> Response:
        form = AcceptInvitationSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        try:
            actions.usable_invitation(data["token"], request=request._request)
        except actions.ActionError as exc:
            return Response({"detail": exc.message}, status=status.HTTP_404_NOT_FOUND)
        try:
            user = actions.do_accept_invitation(
                data["token"],
                username=data["username"],
                password=data["password"],
                display_name=data["display_name"],
                request=request._request,
            )
        except (actions.ActionError, DjangoValidationError) as exc:
            raise _action_error(exc) from None
        membership = Membership.objects.filter(user=user).select_related("institution")
        institution = membership[0].institution
        body = {
            "username": user.username,
            "institution": {"id": institution.pk, "name": institution.name},
            "roles": sorted(m.role for m in membership),
        }
        return Response(body, status=status.HTTP_201_CREATED)
