"""Quantitative DCE-MRI: enhancement curves and pharmacokinetic maps (a part of the viewer app)."""
