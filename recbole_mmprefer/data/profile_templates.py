"""Template profiles, XRec-style (paper section 4.1): deterministic text from metadata, history and reviews.

An item's profile describes it from its ``.item`` fields, e.g. ``"Toy Story
(1995). Genres: Animation, Children's, Comedy."``, followed by quotes of its
latest reviews; a user's profile counts the interactions and names the most
frequent group values, the latest items, the mean rating and review
summaries, e.g. ``"9 interactions. Most frequent genres: ... Latest items:
... Mean rating: 3.80."``. The same item texts and review summaries go into
the LLM prompts (:mod:`recbole_mmprefer.data.profile_llm`).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Dict, List, Optional, Sequence

import numpy as np

from recbole_mmprefer.data.explanations import single_line
from recbole_mmprefer.data.profile_inputs import ItemFields, ProfileInputs, ProfileSettings, is_year_field, split_values

SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def clip_words(text: str, max_words: int) -> str:
    """At most ``max_words`` words of ``text`` (`` ...`` marks a cut)."""
    words = text.split()
    return " ".join(words[:max_words]) + (" ..." if len(words) > max_words else "")


def review_summary(text: str, max_words: int) -> str:
    """A review's first sentence, at most ``max_words`` words."""
    return clip_words(SENTENCE_END.split(single_line(text), maxsplit=1)[0], max_words)


def review_texts(settings: ProfileSettings, reviews: Sequence[str]) -> List[str]:
    """Summaries of the latest ``profile_review_count`` non-empty reviews."""
    if settings.review_count <= 0:
        return []
    summaries = [review_summary(text, settings.review_words) for text in reviews[-settings.review_count:]
                 if text.strip()]
    return [summary for summary in summaries if summary]


def sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else text + "."


def _quoted(texts: Sequence[str]) -> str:
    return "; ".join(f'"{text}"' for text in texts)


def item_description(row: Dict[str, str], spec: ItemFields) -> str:
    """``"Title (year). Label: values."`` from the item fields; fields with "year" in their name go in brackets.

    The group field's values are listed with commas; other values keep at most ``spec.max_words`` words.
    """
    others = spec.fields[1:]
    years = [row[name].strip() for name in others if is_year_field(name) and row[name].strip()]
    title = clip_words(row[spec.title], spec.max_words)
    head = " ".join([title] + [f"({year})" for year in years]).strip()
    sentences = [head] if head else []
    for name in others:
        value = row[name].strip()
        if value and not is_year_field(name):
            text = ", ".join(split_values(value)) if name == spec.group else clip_words(value, spec.max_words)
            sentences.append(f"{spec.label(name)}: {text}")
    return " ".join(sentence(part) for part in sentences)


def describe_item(inputs: ProfileInputs, item: str, spec: Optional[ItemFields] = None) -> str:
    """:func:`item_description` of an item's row with ``spec`` (default every item field); "" for an unknown item."""
    row = inputs.rows.get(item)
    return item_description(row, spec or inputs.spec) if row is not None else ""


def template_item_profile(settings: ProfileSettings, inputs: ProfileInputs, item: str) -> str:
    text = describe_item(inputs, item)
    reviews = review_texts(settings, inputs.reviews.by_item.get(item, []))
    return f"{text} Reviews: {_quoted(reviews)}." if reviews else text


def template_user_profile(settings: ProfileSettings, inputs: ProfileInputs, user: str) -> str:
    """Interaction count, most frequent group values, latest titles, mean rating and review summaries."""
    items = inputs.history.items.get(user, [])
    if not items:
        return ""
    sentences = [f"{len(items)} interaction{'s' if len(items) != 1 else ''}"]
    counts = Counter(value for item in items for value in inputs.groups.get(item, []))
    top = sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))[:settings.top_groups]
    if top:
        label = inputs.spec.label(inputs.spec.group).lower()
        sentences.append(f"Most frequent {label}: " + ", ".join(f"{value} ({count})" for value, count in top))
    latest = items[-settings.history_length:][::-1] if settings.history_length > 0 else []
    if latest:
        sentences.append("Latest items: " + "; ".join(inputs.titles.get(item, item) for item in latest))
    ratings = inputs.history.ratings.get(user, []) if inputs.history.ratings is not None else []
    if ratings:
        sentences.append(f"Mean rating: {np.mean(ratings):.2f}")
    reviews = review_texts(settings, [text for _, text in inputs.reviews.by_user.get(user, [])])
    if reviews:
        sentences.append(f"Reviews: {_quoted(reviews)}")
    return " ".join(sentence(part) for part in sentences)


def template_profiles(settings: ProfileSettings, inputs: ProfileInputs, kind: str, tokens: List[str]) -> List[str]:
    """One template profile per user (``kind`` "user") or item token."""
    write = template_user_profile if kind == "user" else template_item_profile
    return [write(settings, inputs, token) for token in tokens]
