"""Reports.

Owns report templates, authoring with autosaved drafts, key images, the
``Report`` state machine, Ed25519 signing and verification, addenda and
amendments, critical-result notification, the PDF, DICOM Encapsulated PDF,
FHIR and HL7 exports, and the clinicians' report lookup.
"""
