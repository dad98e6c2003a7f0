"""An institution's exit: its complete export, and offboarding after it.

The export (:mod:`.export`) writes every study as DICOM Part-10 files with a
DICOMDIR (PS3.10, PS3.3 F), every signed report version as PDF and as a FHIR
R4 Bundle, the audit trail as JSON Lines and the configuration as JSON, with a
manifest of every file's SHA-256, into one uncompressed tar the administrator
downloads (HTTP Range, so a broken download resumes) or as separate objects
into an S3 bucket they name. Offboarding (:mod:`.offboard`) then removes the
institution from every storage location and every table, keeping only the
audit trail, and signs a certificate of deletion with the counts.
"""
