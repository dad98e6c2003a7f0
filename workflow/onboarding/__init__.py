"""Onboarding: the checklist a new institution's administrator walks through.

Modalities (DICOM nodes with a C-ECHO test), the procedure catalogue (CSV
import), users and roles (invitations), a routing policy started from a
template, the edge gateway (enrolment, the command that starts it, a live
"connected" light from its heartbeat) and a test image. Each step is the
owning app's action (``archive``, ``worklist``, ``pacs_cloud``, this app's
routing policies); this package composes them and reads their state. It lives
in ``workflow`` because the routing policy is this app's and the catalogue is
``worklist``'s, which ``workflow`` may use.
"""
