"""Keep each user's auth groups in step with their memberships.

Grants to an institution are written to ``<slug>:<role>`` groups (see
``models.role_group_name``), so group membership must follow memberships.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from .models import Membership, role_group_name


@receiver(post_save, sender=Membership)
def sync_group_on_save(sender: type, instance: Membership, **kwargs: Any) -> None:
    group, _ = Group.objects.get_or_create(name=role_group_name(instance.institution, instance.role))
    if instance.is_active:
        instance.user.groups.add(group)
    else:
        instance.user.groups.remove(group)


@receiver(post_delete, sender=Membership)
def sync_group_on_delete(sender: type, instance: Membership, **kwargs: Any) -> None:
    group = Group.objects.filter(name=role_group_name(instance.institution, instance.role)).first()
    if group is not None:
        instance.user.groups.remove(group)
