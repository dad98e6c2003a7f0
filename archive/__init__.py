"""The cloud archive.

Owns patients, studies, series and instances as indexed per institution; the
object-storage backends (filesystem and S3) and the object-key layout; the one
ingest service every entry point uses (C-STORE, STOW-RS, media import, the
edge's forwarder); DICOMweb STOW/QIDO/WADO; the cloud DIMSE service (C-ECHO,
C-STORE, C-FIND, C-MOVE, C-GET); study completion; tiering and fixity.

Other apps learn about arriving and completed studies through the signals in
``archive.signals``; they change archive state only through ``archive.actions``.
"""
