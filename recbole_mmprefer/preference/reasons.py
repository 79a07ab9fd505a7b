"""Preference attribution (ExplainRec, design section 4): the reasons a history gives for or against a target.

Every history item carries its reason: the review summary where the data set
has one (``entry["reason"]``), otherwise its genres / categories (``groups``).
The **attribution** of a sample is the history items that share a group with
the target: the liked ones speak for it, the disliked ones against it. Its
**stance** is +1 when more liked than disliked items share a group with the
target, -1 when fewer, 0 otherwise (no shared group, or a tie).

The **reference reason** of a sample, what ExplainRec learns to say after its
Yes/No answer, is the user's own review of the target where the data set has
reviews, and otherwise verbalises the attribution, e.g.::

    It is Comedy, like "Alpha (1990)", which the user liked, and like "Gamma", which the user disliked.
    It shares no genre with the items the user rated.

The **history summary** (``explainrec_history_summary``) says the history's own
verdict in words, ``The user liked 7 of these 10 movies.``: on ml-100k the
share of liked items alone ranks the test windows at AUC 0.726, and a 135M LLM
tuned on a few dozen samples cannot be expected to count it from two lists.
It goes into the prompt (over the history shown) and, where the reason is not
the user's own review, opens the reference reason (over the whole window), so
that the reason states what the answer rests on.

Nothing here reads a model: reasons are data, built from the preference
samples alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

from recbole_mmprefer.preference.prompts import quoted, sample_title


@dataclass
class Attribution:
    """The history items sharing a group with the target, and the groups they share."""

    shared_groups: List[str]
    liked: List[dict]
    disliked: List[dict]

    @property
    def stance(self) -> int:
        return (len(self.liked) > len(self.disliked)) - (len(self.liked) < len(self.disliked))


def attribution(sample: dict) -> Attribution:
    """Which history items speak for or against the target (see the module docstring)."""
    target = list(dict.fromkeys(sample.get("groups") or []))
    liked, disliked, shared = [], [], []
    for entry in sample["history"]:
        common = [group for group in target if group in (entry.get("groups") or [])]
        if not common:
            continue
        (liked if entry["liked"] else disliked).append(entry)
        shared += [group for group in common if group not in shared]
    return Attribution([group for group in target if group in shared], liked, disliked)


def item_reason(entry: dict) -> str:
    """A history item's own reason: its review summary, else its groups ("" without either)."""
    return str(entry.get("reason") or ", ".join(entry.get("groups") or []))


def history_with_reasons(entries: Sequence[dict]) -> str:
    """``"A (1995)" (Comedy, Drama), "B" (...)``: the titles with their reasons, for the ExplainRec prompt."""
    parts = []
    for entry in entries:
        reason = item_reason(entry)
        parts.append(f'"{sample_title(entry)}"' + (f" ({reason})" if reason else ""))
    return ", ".join(parts)


def history_summary(history: Sequence[dict], kind: str) -> str:
    """``The user liked 7 of these 10 movies.`` (``kind``: the item kind, made plural with an s)."""
    liked = sum(1 for entry in history if entry["liked"])
    return f"The user liked {liked} of these {len(history)} {kind}s."


def reference_reason(sample: dict, summary_kind: Optional[str] = None) -> str:
    """The user's own review of the target where there is one (a reference written by the user), else the
    attribution in words, opened by the history summary when ``summary_kind`` (the item kind) is given (see the
    module docstring)."""
    if sample.get("review"):
        return str(sample["review"])
    opening = history_summary(sample["history"], summary_kind) + " " if summary_kind else ""
    found = attribution(sample)
    if not found.shared_groups:
        return opening + "It shares no genre with the items the user rated."
    clauses = []
    for entries, verdict in ((found.liked, "liked"), (found.disliked, "disliked")):
        if entries:
            clauses.append(f"like {quoted([sample_title(entry) for entry in entries])}, which the user {verdict}")
    return opening + f"It is {', '.join(found.shared_groups)}, " + ", and ".join(clauses) + "."
