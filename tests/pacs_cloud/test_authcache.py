"""The per-process memo of token and membership lookups never outlives a change made here."""

from __future__ import annotations

import pytest
from django.test import override_settings
from django.utils import timezone
from rest_framework import exceptions

from pacs_cloud import access, authcache
from pacs_cloud.actions import do_revoke_token
from pacs_cloud.authentication import issue_token, user_for_token
from pacs_cloud.models import Membership

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _empty_memo():
    authcache.forget()
    yield
    authcache.forget()


def test_repeated_lookups_reuse_the_memo(tenants, django_assert_num_queries):
    user = tenants.a.radiologist
    _, key = issue_token(user)
    user_for_token(key)
    access.institution_ids(user)
    with django_assert_num_queries(0):
        found, _ = user_for_token(key)
        assert access.institution_ids(user) == {tenants.a.institution.pk}
    assert found.pk == user.pk


def test_each_request_gets_its_own_user_object(tenants):
    _, key = issue_token(tenants.a.radiologist)
    first, _ = user_for_token(key)
    first.request_scratch = "set by one request"
    second, _ = user_for_token(key)
    assert first is not second
    assert not hasattr(second, "request_scratch")


def test_revocation_takes_effect_at_once(tenants):
    user = tenants.a.radiologist
    token, key = issue_token(user)
    user_for_token(key)
    do_revoke_token(token, acting_user=user)
    with pytest.raises(exceptions.AuthenticationFailed, match="revoked"):
        user_for_token(key)


def test_deactivated_user_is_refused_at_once(tenants):
    user = tenants.a.radiologist
    _, key = issue_token(user)
    user_for_token(key)
    user.is_active = False
    user.save(update_fields=["is_active"])
    with pytest.raises(exceptions.AuthenticationFailed, match="inactive"):
        user_for_token(key)


def test_membership_change_is_seen_at_once(tenants):
    user = tenants.a.radiologist
    assert tenants.a.institution.pk in access.institution_ids(user)
    membership = Membership.objects.get(user=user, institution=tenants.a.institution)
    membership.is_active = False
    membership.save(update_fields=["is_active"])
    assert tenants.a.institution.pk not in access.institution_ids(user)


def test_expiry_is_checked_on_every_request(tenants, time_machine):
    time_machine.move_to(timezone.now(), tick=True)
    _, key = issue_token(tenants.a.radiologist, ttl_hours=1)
    user_for_token(key)
    time_machine.shift(2 * 3600)
    with pytest.raises(exceptions.AuthenticationFailed, match="expired"):
        user_for_token(key)


@override_settings(AUTH_CACHE_SECONDS=0)
def test_zero_seconds_turns_the_memo_off(tenants, django_assert_num_queries):
    user = tenants.a.radiologist
    access.institution_ids(user)
    with django_assert_num_queries(1):
        access.institution_ids(user)
