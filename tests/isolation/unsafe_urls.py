"""A test-only URL configuration: the real routes plus views that forget the access policy.

``test_harness_bites.py`` walks it to prove the harness catches each mistake.
"""

from django.http import Http404, HttpResponseForbidden, JsonResponse
from django.urls import path

from archive.models import Patient, Study
from pacs_cloud.urls import urlpatterns as product_urlpatterns


def study_without_policy(request, study_id):
    """Looks a study up by id alone: anyone signed in reads anyone's patient."""
    study = Study.objects.select_related("patient").filter(pk=study_id).first()
    if study is None:
        raise Http404
    return JsonResponse({"patient": study.patient.name, "accession": study.accession_number})


def patients_without_policy(request):
    """A list with no tenant filter."""
    return JsonResponse({"patients": list(Patient.objects.values_list("name", "patient_id"))})


def study_existence_oracle(request, study_id):
    """Shows nothing, but answers 403 for a stranger's study and 404 for a missing one."""
    if not Study.objects.filter(pk=study_id).exists():
        raise Http404
    return HttpResponseForbidden("not yours")


def route_nobody_registered(request, widget):
    return JsonResponse({"widget": widget})


urlpatterns = [
    path("api/v1/unsafe/studies/<uuid:study_id>/", study_without_policy),
    path("api/v1/unsafe/patients/", patients_without_policy),
    path("api/v1/unsafe/oracle/<uuid:study_id>/", study_existence_oracle),
    path("dicomweb/unsafe/<str:widget>/", route_nobody_registered),
    *product_urlpatterns,
]
