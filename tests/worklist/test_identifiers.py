"""Accession numbers and Patient IDs issued at registration, and their configuration checks."""

import pytest

from worklist import actions
from worklist.checks import check_identifier_formats


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{prefix}{date:%y%m%d}", "no {seq} field"),
        ("{prefix}-{date:%Y%m%d}-{seq:05d}", "over the 16 characters"),
        ("{prefix}{sequence}", "does not format"),
    ],
)
def test_a_bad_accession_format_is_a_configuration_error(settings, template, problem):
    settings.WORKLIST_ACCESSION_FORMAT = template
    (error,) = check_identifier_formats(None)
    assert error.id == "worklist.E001" and problem in error.msg


def test_the_default_formats_pass_the_check():
    assert check_identifier_formats(None) == []


def test_a_format_without_the_date_numbers_on_forever(sites, settings):
    settings.WORKLIST_ACCESSION_FORMAT = "{prefix}{seq:06d}"
    institution = sites["a"].institution
    assert [actions.issue_accession_number(institution) for _ in range(3)] == ["ACH000001", "ACH000002", "ACH000003"]


def test_an_issued_number_skips_one_already_taken(sites, settings, order_factory):
    settings.WORKLIST_PATIENT_ID_FORMAT = "{prefix}P{seq:03d}"
    institution = sites["a"].institution
    actions.do_register_patient(institution, name="TAKEN^BY HAND", patient_id="ACHP001")
    assert actions.issue_patient_id(institution) == "ACHP002"
