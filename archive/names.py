"""Person names (VR PN, PS3.5 §6.2.1) as stored, matched and searched.

A PN value has up to three component groups — alphabetic, ideographic and
phonetic — separated by ``=``, each of up to five ``^``-separated components
(family, given, middle, prefix, suffix). ``Wang^XiaoDong=王^小东=`` is one
name written twice. Values reach us already decoded to Unicode from whatever
Specific Character Set they were sent in (GB18030, ISO_IR 192, ...).

Matching forms:

* alphabetic and phonetic groups are compared upper-cased and without
  accents (``Müller`` matches ``MULLER``), as most PACS do for PN;
* the ideographic group is compared after NFKC (full-width Latin and digits
  become ordinary ones) and is otherwise exact;
* ``words`` lists every component's words in every group, plus each group's
  components run together (``王小东``, ``WANGXIAODONG``), for fuzzy matching:
  people type a Chinese name without the ``^``.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from pacs_cloud.lib.person_names import search_words


def fold(text: str) -> str:
    """Upper-case, accent-free form of alphabetic text."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return unicodedata.normalize("NFC", bare).upper()


def _ideographic(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def _trim(group: str) -> str:
    """A component group without trailing empty components or blanks."""
    return "^".join(part.strip() for part in group.split("^")).rstrip("^")


@dataclass(frozen=True)
class NameForms:
    full: str
    alphabetic: str
    ideographic: str
    phonetic: str
    words: str


def split_groups(value: str) -> tuple[str, str, str]:
    groups = (str(value or "").split("=") + ["", ""])[:3]
    return _trim(groups[0]), _trim(groups[1]), _trim(groups[2])


def name_forms(value: object) -> NameForms:
    """The stored and matching forms of one PN value."""
    full = str(value or "").strip()
    alphabetic, ideographic, phonetic = split_groups(full)
    alphabetic, ideographic, phonetic = fold(alphabetic), _ideographic(ideographic), fold(phonetic)
    words: list[str] = []
    for group in (alphabetic, ideographic, phonetic):
        parts = [p for p in group.split("^") if p]
        for part in parts:
            words.extend(part.split())
        if len(parts) > 1:
            words.append("".join("".join(p.split()) for p in parts))
    unique = list(dict.fromkeys(w for w in words if w))
    # Leading and trailing blanks let "starts a word" be one LIKE pattern: '% WORD%'.
    return NameForms(
        full=full.rstrip("="),
        alphabetic=alphabetic,
        ideographic=ideographic,
        phonetic=phonetic,
        words=(" " + " ".join(unique) + " ") if unique else "",
    )


def query_groups(value: str) -> list[tuple[str, str]]:
    """A PN matching key as ``(column, folded pattern)`` pairs.

    One group (no ``=``) may match any of the three stored groups, which the
    caller ORs; several groups must each match their own (the caller ANDs).
    Returned column names are ``alphabetic``, ``ideographic``, ``phonetic``,
    or ``any`` for a single-group key.
    """
    if "=" not in value:
        return [("any", value.strip())]
    alphabetic, ideographic, phonetic = (value.split("=") + ["", ""])[:3]
    pairs = []
    for column, text in (("alphabetic", alphabetic), ("ideographic", ideographic), ("phonetic", phonetic)):
        if text.strip() and text.strip() != "*":
            pairs.append((column, text.strip()))
    return pairs


def fold_pattern(pattern: str, column: str) -> str:
    """Fold a key as the column it is compared with is folded (wildcards pass through)."""
    if column == "ideographic":
        return _ideographic(_trim_pattern(pattern))
    return fold(_trim_pattern(pattern))


def _trim_pattern(pattern: str) -> str:
    # "WANG^^" and "WANG" name the same person; "WANG^*" keeps its wildcard.
    return pattern.rstrip("^") if not pattern.endswith("*") else pattern


def fuzzy_words(value: str) -> list[set[str]]:
    """The words of a fuzzy name key: each must start a word of the name.

    The key may be typed in any form a user meets (a raw PN, ``ZHANG, SAN``,
    the displayed ``张三 (ZHANG, SAN)``; :func:`pacs_cloud.lib.person_names.search_words`).
    Every word comes with its alphabetic and its ideographic folding (either
    may match), since a key does not say which script a word is in.
    """
    return [{fold(word), _ideographic(word)} for word in search_words(value)]
