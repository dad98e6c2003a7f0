"""Hanging protocols: which series of the current study and its priors go in which pane, with which window.

Kept per institution (by its administrators) and per user (a reader saves
the layout in front of them as theirs). On opening the comparison view the
first protocol matching the study's modality, body region and number of
priors applies: the reader's own first, then the hospital's (:mod:`.matching`).
"""
