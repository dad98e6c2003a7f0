from django.db import migrations


def _on_postgres(statement):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(statement)

    return run


class Migration(migrations.Migration):
    """Prefix matching on the phonetic group too (PostgreSQL): a single-group
    name key is matched against all three groups, and one unindexed column
    would make the planner scan every patient."""

    dependencies = [("archive", "0003_leaner_indexes")]

    operations = [
        migrations.RunPython(
            _on_postgres(
                "CREATE INDEX IF NOT EXISTS archive_patient_phonetic_prefix "
                "ON archive_patient (name_phonetic varchar_pattern_ops)"
            ),
            _on_postgres("DROP INDEX IF EXISTS archive_patient_phonetic_prefix"),
            elidable=False,
        ),
    ]
