"""Break-glass: emergency read access to a study outside a user's grants, time-limited, alerted and reviewed.

A clinician or radiologist states a reason and gets read access to a study of
an institution that allows break-glass from one of theirs
(:class:`~archive.breakglass.models.BreakGlassAllowance`); the grant is an
ordinary ``view_study`` grant written by ``archive.actions.grant_study_view``,
the access door (``archive/access.py``) stops honouring it at its expiry, and
a sweep takes it back. Both institutions' administrators are alerted at once
(home page, push, e-mail), and their review page lists every break-glass
access with the reads the audit trail recorded under it.
"""
