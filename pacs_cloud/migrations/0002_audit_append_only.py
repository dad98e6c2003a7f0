"""Make the audit table append-only in PostgreSQL.

A row trigger refuses UPDATE and DELETE for every role the application uses.
(TRUNCATE, which test databases use to reset, needs table ownership and is a
separate, statement-level operation.)
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION pacs_audit_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER pacs_audit_append_only
    BEFORE UPDATE OR DELETE ON pacs_cloud_auditevent
    FOR EACH ROW EXECUTE FUNCTION pacs_audit_refuse_change();
"""

DROP = """
DROP TRIGGER IF EXISTS pacs_audit_append_only ON pacs_cloud_auditevent;
DROP FUNCTION IF EXISTS pacs_audit_refuse_change();
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("pacs_cloud", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
