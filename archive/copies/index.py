"""The copy ingest records with each new instance: its object in the default location.

Part of the instance's own insert statement (archive.ingest), so recording
the copy costs no round trip and commits with the row it belongs to.
"""

from __future__ import annotations

from typing import Any, cast

from django.db.models import Field

from ..models import Instance, ObjectCopy
from .locations import default_location_id

_FIELDS: list[Field] = [
    cast(Field, ObjectCopy._meta.get_field(name))
    for name in ("instance", "location", "key", "size", "sha256", "written_at")
]
_COLUMNS = ", ".join(f'"{f.column}"' for f in _FIELDS) + ', "status"'

# Completed by the caller with ``AND <condition>`` (the instance was inserted).
COPY_INSERT = (
    f"INSERT INTO {ObjectCopy._meta.db_table} ({_COLUMNS}) "  # noqa: S608
    f"SELECT {', '.join(['%s'] * len(_FIELDS))}, '{ObjectCopy.Status.GOOD.value}' WHERE 1 = 1"
)


def copy_params(instance: Instance, connection: Any) -> list[Any]:
    """The values of :data:`COPY_INSERT` for a new instance's object in the default location."""
    values = [instance.pk, default_location_id(), instance.storage_key, instance.size, instance.sha256]
    values.append(instance.received_at)
    return [field.get_db_prep_save(value, connection) for field, value in zip(_FIELDS, values, strict=True)]
