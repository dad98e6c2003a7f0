"""Referrals between hospitals, second-opinion shares and image exchange.

A part of the workflow app with the files of an app: ``models`` (in the
``workflow`` app's tables), ``actions`` (every write), ``access`` (who sees
which referral and share), ``api``, ``views``, ``urls``, ``tasks`` and
``demo``. Other code reaches it through ``actions``, ``access``, ``api`` and
``models`` only; it reaches the reading workflow likewise, and neither
imports the other's internals.
"""
