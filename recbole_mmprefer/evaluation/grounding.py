"""Grounding of explanations in their inputs (a faithfulness check beside the paper's section 4.2 metrics).

An explanation is grounded when what it says comes from what the explainer
was shown: the item's title and profile, the user's profile and the titles and
profiles of the nodes on the pair's retrieval paths. The score of one
explanation is the share of its **content words** that occur among the content
words of those inputs; it needs no reference, so it is reported where a data
set has no explanations (ml-100k) too.

Content words: lower-cased runs of letters and digits (``'`` kept inside a
word), minus English stop words (scikit-learn's list) and minus the words every
explanation of a recommendation uses whatever its inputs (:data:`SCAFFOLD`:
"user", "enjoy", "recommend", ...). Two words match when they are equal up to
a plural ending (``s``, ``es``, ``ies`` / ``y``: toys ~ toy, stories ~ story). Numbers
count: an invented year is as ungrounded as an invented genre. An explanation
without content words scores NaN (it claims nothing), so it is left out of the
mean and counted in the notes.
"""

from __future__ import annotations

import re
from typing import Iterable, List, Optional, Sequence, Set

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from recbole_mmprefer.evaluation.metrics import MetricResult, check_texts

WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
SCAFFOLD = frozenset({
    "user", "users", "enjoy", "enjoys", "enjoyed", "enjoying", "like", "likes", "liked", "love", "loves", "loved",
    "would", "item", "items", "recommend", "recommended", "recommendation", "explanation", "explanations",
    "prefer", "prefers", "preference", "preferences", "interest", "interested", "interests", "appreciate",
    "appreciates", "probably", "likely", "especially", "particularly", "really", "great", "good", "perfect",
    "choice", "fan", "fans", "based", "history", "previous", "previously", "similar", "make", "makes",
})
RULE = "content words (scikit-learn English stop words and recommendation scaffolding removed), plurals matched"


def word_forms(word: str) -> Set[str]:
    """The word and what it is with a plural ending taken off (``stories``: stories, storie, stori, story)."""
    forms = {word}
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        forms.update({word[:-1], word[:-2] if word.endswith("es") else word[:-1]})
        if word.endswith("ies"):
            forms.add(word[:-3] + "y")
    return forms


def content_words(text: str) -> List[str]:
    """The content words of ``text`` in order (repeats kept)."""
    words = (match.group(0).split("'")[0] for match in WORD.finditer(text.lower()))
    return [word for word in words if word not in ENGLISH_STOP_WORDS and word not in SCAFFOLD]


def grounding(explanation: str, inputs: Iterable[str]) -> float:
    """The share of ``explanation``'s content words found in ``inputs``' content words (NaN without any)."""
    words = content_words(explanation)
    if not words:
        return float("nan")
    known: Set[str] = {form for text in inputs for word in content_words(text) for form in word_forms(word)}
    return sum(bool(word_forms(word) & known) for word in words) / len(words)


def grounding_scores(candidates: Sequence[str], inputs: Sequence[Sequence[str]],
                     notes: Optional[dict] = None) -> MetricResult:
    """``grounding`` per candidate against its own pair's input texts."""
    check_texts(candidates, "candidate")
    if len(candidates) != len(inputs):
        raise ValueError(f"{len(candidates)} candidates but {len(inputs)} sets of inputs")
    scores = [grounding(candidate, texts) for candidate, texts in zip(candidates, inputs)]
    without = sum(score != score for score in scores)
    return MetricResult.from_samples("grounding", scores, {"rule": RULE, "without_content_words": without,
                                                           **(notes or {})})


def pair_inputs(rows, records: Sequence[dict], node_text) -> List[List[str]]:
    """Per row (``user_id``, ``item_id``, ``title``, ``user_profile``, ``item_profile``), the texts its explainer
    was shown: the row's own, and the titles and profiles of the nodes on its paths (``records``: paths.jsonl)."""
    by_pair = {(str(record["user_id"]), str(record["item_id"])): record for record in records}
    texts = []
    for row in rows.to_dict(orient="records"):
        user, item = str(row["user_id"]), str(row["item_id"])
        shown = [row.get("title", ""), row.get("user_profile", ""), row.get("item_profile", ""),
                 node_text.title(item), node_text.profile("item", item), node_text.profile("user", user)]
        for path in by_pair.get((user, item), {}).get("paths", []):
            for kind, token in zip(path["types"], path["tokens"]):
                shown += [node_text.profile(kind, token), node_text.title(token) if kind == "item" else ""]
        texts.append([text for text in shown if text])
    return texts
