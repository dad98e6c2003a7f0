"""Make signed report versions immutable in PostgreSQL.

A row trigger refuses UPDATE and DELETE of ``reports_reportversion`` for every
role the application uses, behind the model's own refusal.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION reports_version_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'signed report versions are immutable (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER reports_version_immutable
    BEFORE UPDATE OR DELETE ON reports_reportversion
    FOR EACH ROW EXECUTE FUNCTION reports_version_refuse_change();
"""

DROP = """
DROP TRIGGER IF EXISTS reports_version_immutable ON reports_reportversion;
DROP FUNCTION IF EXISTS reports_version_refuse_change();
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("reports", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
