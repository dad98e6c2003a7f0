"""Exam registration and orders.

Owns patients' exam orders (the ``Order`` state machine), the procedure
catalogue and modality stations, accession numbers, the DICOM Modality
Worklist (C-FIND) and MPPS (N-CREATE/N-SET) services, and matching arriving
studies to orders with a reconciliation queue for the ones that match nothing.
"""
