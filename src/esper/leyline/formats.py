"""Versions of the files Esper writes for people and other programs, and the one table that
reads older versions.

0.4.0 is the first release. Its JSON documents carry ``"format": N``. A document without the
key was written by a development version before it (0.1 to 0.3) and reads as version 0.
Migrating a document fills in, for each version it passes, the settings that did not exist yet,
with the value the older version behaved as; nothing else about it changes.

Binary checkpoints (``checkpoint.pt``, ``model.pt``, the PPO agent inside a policy) carry
their own format number and are refused, with one line, when it is not the current one: they
hold a run's internal state, which has no meaning to migrate.
"""

from __future__ import annotations

from collections.abc import Mapping

#: ``config.json`` of a run directory (``esper.runs.RunSpec``).
RUN_SPEC = "run-spec"
#: ``summary.json`` of a finished run (``esper.runs.RunSummary``).
RUN_SUMMARY = "run-summary"
#: What a Simic episode trains (``esper.simic.EpisodeConfig``), kept in policy files.
EPISODE = "episode"
#: ``benchmarks/growth_frontier.py``'s record of the arguments its runs were made with.
FRONTIER_RECORD = "frontier-record"

#: The version each format is written at.
CURRENT: Mapping[str, int] = {RUN_SPEC: 1, RUN_SUMMARY: 1, EPISODE: 1, FRONTIER_RECORD: 1}

#: (format, version) -> what reading a document of that version as the next one fills in.
#: Version 0 is everything written before 0.4.0. The values are how those versions behaved:
#: growth on an accuracy plateau (``timing``), the shadow pass on every step (``shadow_every``),
#: and a heuristic that never stopped growing (growth patience 0).
UPGRADES: Mapping[tuple[str, int], Mapping[str, object]] = {
    (RUN_SPEC, 0): {"timing": "plateau", "shadow_every": 1, "growth_patience": 0},
    (RUN_SUMMARY, 0): {},
    (EPISODE, 0): {"shadow_every": 1, "growth_patience": 0},
    (FRONTIER_RECORD, 0): {"growth_patience": 0},
}

#: (format, version) -> keys renamed on reading a document of that version as the next one
#: (old name -> new name); applied before the defaults are filled in.
RENAMED: Mapping[tuple[str, int], Mapping[str, str]] = {
    # One setting, one name: the heuristic's growth patience is ``growth_patience`` everywhere.
    (EPISODE, 0): {"heuristic_patience": "growth_patience"},
}

#: The key that holds a document's version.
FORMAT_KEY = "format"


class FormatError(ValueError):
    """A document of an unknown format or of a version newer than this Esper reads."""


def migrate(kind: str, raw: Mapping) -> dict:
    """``raw`` as a document of ``kind``'s current version.

    Args:
        kind: one of the formats above (``RUN_SPEC``, ``EPISODE``, ...).
        raw: the document as read; it is not changed.

    Returns:
        A new dict: every key of ``raw`` (under its current name), the settings later versions
        added (where ``raw`` does not set them), and ``"format"`` set to the current version.

    Raises:
        FormatError: ``kind`` is unknown, or the version is not an integer from 0 to the
            current one.
    """
    if kind not in CURRENT:
        raise FormatError(f"unknown format {kind!r}; known: {', '.join(sorted(CURRENT))}")
    current = CURRENT[kind]
    version = raw.get(FORMAT_KEY, 0)
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= current:
        raise FormatError(
            f"{kind} version {version!r} is not one this Esper reads (0 to {current}); "
            "it was written by another version of esper"
        )
    out = dict(raw)
    for step in range(version, current):
        for old, new in RENAMED.get((kind, step), {}).items():
            if old in out:
                out.setdefault(new, out.pop(old))
        for key, value in UPGRADES[(kind, step)].items():
            out.setdefault(key, value)
    out[FORMAT_KEY] = current
    return out


def stamped(kind: str, document: Mapping) -> dict:
    """``document`` with its format's current version, ready to be written."""
    return {**document, FORMAT_KEY: CURRENT[kind]}
