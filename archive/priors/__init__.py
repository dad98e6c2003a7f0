"""Relevant priors: the patient's earlier studies a reader needs beside the one being read.

An institution administrator keeps ordered rules (:mod:`.models`); the first
rule matching the current study's modality and body region says which earlier
studies of the same patient at the same hospital count (same body region,
same or related modality, within N years, at most K). Without a matching
rule the defaults apply. :func:`.selection.select_priors` applies them; the
reading workflow grants a task's priors read-only with its study, through
:func:`archive.actions.grant_study_view`.
"""
