"""The lookup matches each typed word against every word of the patient's name, in every script."""

from django.db import migrations


def name_words(apps, schema_editor):
    from archive.names import name_forms

    Report = apps.get_model("reports", "Report")
    for report in Report.objects.only("pk", "patient_name").iterator(chunk_size=2000):
        Report.objects.filter(pk=report.pk).update(patient_name_search=name_forms(report.patient_name).words[:324])


class Migration(migrations.Migration):
    dependencies = [("reports", "0002_versions_immutable")]

    operations = [migrations.RunPython(name_words, migrations.RunPython.noop)]
