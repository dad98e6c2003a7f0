"""Person names (VR PN, PS3.5 6.2.1) as people read them, and as people type them back.

A PN value holds up to three component groups — alphabetic, ideographic,
phonetic — separated by ``=``, each of up to five ``^``-separated components
(family, given, middle, prefix, suffix). Every page, list, overlay, PDF and
API display field shows a name in one form, :func:`display_name`:

* ``ZHANG^SAN=张^三`` → ``张三 (ZHANG, SAN)``: the characters first, as the
  patient writes the name, with the Latin form beside it for systems and
  colleagues who read only Latin letters;
* ``SMITH^JOHN^^DR`` → ``SMITH, JOHN DR``; ``张^三`` alone (rare) → ``张三``.

:func:`search_words` reads a name typed into a search box in any of these
forms — a raw PN, the display form pasted whole, ``ZHANG, SAN``, ``张三`` — as
the words each of which must start a word of the stored name.
"""

from __future__ import annotations

import re

# Punctuation people type or paste around names (ASCII and full-width forms).
_SEPARATORS = re.compile(r"[\s\^=,;()\[\]（），；、]+")


def name_groups(pn: object) -> tuple[str, str, str]:
    """The alphabetic, ideographic and phonetic groups of a PN value (PS3.5 6.2.1.1)."""
    groups = str(pn or "").split("=")
    alphabetic, ideographic, phonetic = (groups + ["", "", ""])[:3]
    return alphabetic, ideographic, phonetic


def latin_name(group: str) -> str:
    """One alphabetic (or phonetic) group for reading: ``FAMILY, GIVEN MIDDLE PREFIX SUFFIX``."""
    parts = [p.strip() for p in group.split("^")]
    family, given = (parts + ["", ""])[:2]
    rest = " ".join(p for p in parts[2:] if p)
    return ", ".join(p for p in (family, " ".join(p for p in (given, rest) if p)) if p)


def ideographic_name(group: str) -> str:
    """The ideographic group for reading: family name then given name, run together (``张三``)."""
    return "".join(p.strip() for p in group.split("^") if p.strip())


def display_name(pn: object) -> str:
    """How a person's name is shown to a user: ``张三 (ZHANG, SAN)``, ``SMITH, JOHN``, or ``""``."""
    alphabetic, ideographic, phonetic = name_groups(pn)
    latin = latin_name(alphabetic) or latin_name(phonetic)
    chars = ideographic_name(ideographic)
    if chars:
        return f"{chars} ({latin})" if latin and latin != chars else chars
    return latin


def search_words(text: str) -> list[str]:
    """The words of a typed name, in whatever form it was typed or pasted.

    ``张三 (ZHANG, SAN)``, ``ZHANG, SAN``, ``ZHANG^SAN=张^三`` and ``张三`` all
    give their words (``["张三", "ZHANG", "SAN"]``, ...); wildcards are dropped.
    Folding (case, accents, full-width forms) is left to the matcher.
    """
    return [w for w in _SEPARATORS.split(text.replace("*", " ").replace("?", " ")) if w]
