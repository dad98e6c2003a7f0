"""Every archived object so far has one copy: in the default location, the store ``STORAGE_URL`` names."""

from urllib.parse import urlparse

from django.conf import settings
from django.db import migrations


def default_location_fields(url: str) -> dict:
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        return {
            "kind": "s3",
            "bucket": parsed.netloc,
            "prefix": parsed.path.strip("/"),
            "endpoint_url": settings.S3_ENDPOINT_URL,
        }
    return {"kind": "filesystem", "path": parsed.path}


def forwards(apps, schema_editor):
    StorageLocation = apps.get_model("archive", "StorageLocation")
    Instance = apps.get_model("archive", "Instance")
    ObjectCopy = apps.get_model("archive", "ObjectCopy")
    location = StorageLocation.objects.filter(is_default=True).first()
    if location is None:
        location = StorageLocation.objects.create(
            name="primary",
            site="primary",
            tier="online",
            read_rank=10,
            is_default=True,
            **default_location_fields(settings.STORAGE_URL),
        )
    connection = schema_editor.connection
    copy_table = ObjectCopy._meta.db_table
    instance_table = Instance._meta.db_table
    location_id = ObjectCopy._meta.get_field("location").get_db_prep_value(location.pk, connection)
    with connection.cursor() as cursor:
        # One statement, however many rows: the index may hold millions of objects.
        cursor.execute(
            f"INSERT INTO {copy_table} (instance_id, location_id, key, size, sha256, written_at, status) "  # noqa: S608
            f"SELECT i.id, %s, i.storage_key, i.size, i.sha256, i.received_at, 'good' FROM {instance_table} i "
            f"WHERE NOT EXISTS (SELECT 1 FROM {copy_table} c WHERE c.instance_id = i.id AND c.location_id = %s)",
            [location_id, location_id],
        )


class Migration(migrations.Migration):
    dependencies = [("archive", "0008_storage_locations_and_copies")]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
