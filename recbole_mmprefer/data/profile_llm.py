"""LLM profiles, as XRec has GPT-3.5 write them (paper section 4.1): prompts and the replies that become profiles.

A local Hugging Face causal LM (``profile_llm_path``) or an OpenAI-compatible
endpoint (``profile_api_base``) is asked, per item, what kind of user would
enjoy it and, per user with history, what the user likes; the prompt shows
the same item texts and review summaries as the template profiles. Replies go
through :class:`~recbole_mmprefer.llm_backends.ReplyBatcher`, cached in
``<run_dir>/profile_cache.jsonl`` so a rerun generates nothing twice; an
empty reply is asked again once and never cached.
"""

from __future__ import annotations

from typing import List, Sequence

from recbole_mmprefer.artifacts import cache_file
from recbole_mmprefer.data.explanations import single_line
from recbole_mmprefer.data.profile_inputs import ProfileInputs, ProfileSettings
from recbole_mmprefer.data.profile_templates import describe_item, review_summary, review_texts, sentence
from recbole_mmprefer.errors import InputError
from recbole_mmprefer.llm_backends import BackendSettings, ReplyBatcher, ReplyCache, make_backend

ITEM_INSTRUCTION = (
    "You help a recommender system describe its catalogue. Below is an item with its details{reviews}. "
    "In two or three sentences, say what kind of user would enjoy this item and why. "
    "Write plain prose about the audience, without a heading or a list.")
USER_INSTRUCTION = (
    "You help a recommender system understand its users. Below are the items a user interacted with, "
    "oldest first{reviews}. In two or three sentences, describe what this user likes and looks for. "
    "Write plain prose about the user's tastes, without a heading or a list.")


def item_prompt(settings: ProfileSettings, inputs: ProfileInputs, item: str) -> str:
    reviews = review_texts(settings, inputs.reviews.by_item.get(item, []))
    lines = [ITEM_INSTRUCTION.format(reviews=", and what reviewers wrote" if reviews else ""), "",
             f"Item: {describe_item(inputs, item)}"]
    lines += ["Reviews:"] + [f"- {review}" for review in reviews] if reviews else []
    return "\n".join(lines)


def user_prompt(settings: ProfileSettings, inputs: ProfileInputs, user: str) -> str:
    """The user's latest ``profile_llm_history_length`` items (with ratings where every one has one) and reviews."""
    items = inputs.history.items.get(user, [])
    ratings = inputs.history.ratings.get(user) if inputs.history.ratings is not None else None
    rated = ratings if ratings is not None and len(ratings) == len(items) else None
    brief = inputs.spec.brief()
    lines = []
    for position in range(max(len(items) - settings.llm_history_length, 0), len(items)):
        item = items[position]
        text = describe_item(inputs, item, brief) or sentence(item)
        lines.append(f"- {text}" + (f" Rated {rated[position]:g}." if rated is not None else ""))
    count = settings.review_count
    reviews = inputs.reviews.by_user.get(user, [])[-count:] if count > 0 else []
    summaries = [(item, review_summary(text, settings.review_words)) for item, text in reviews]
    review_lines = [f'- On {inputs.titles.get(item, item)}: "{summary}"' for item, summary in summaries if summary]
    head = USER_INSTRUCTION.format(reviews=", and reviews the user wrote" if review_lines else "")
    return "\n".join([head, "", "Items:"] + lines + (["Reviews:"] + review_lines if review_lines else []))


def llm_model_name(backend: BackendSettings) -> str:
    """The name that marks LLM profiles (``llm:<name>``); checks that exactly one backend is configured."""
    if bool(backend.llm_path) == bool(backend.api_base):
        raise InputError("--source llm needs exactly one of profile_llm_path (a local causal LM) and "
                         f"profile_api_base (an OpenAI-compatible endpoint); got {backend.llm_path!r} and "
                         f"{backend.api_base!r}")
    return backend.model_name()


def profile_batcher(config, settings: ProfileSettings, source_name: str) -> ReplyBatcher:
    """The replies of the profiles' backend (made on the first uncached prompt), cached by ``source_name``."""
    cache = ReplyCache(cache_file(config, "profiles"), source_name, settings.backend.max_new_tokens)
    return ReplyBatcher(cache, lambda: make_backend(settings.backend), settings.backend.llm_batch_size,
                        retry_empty=True)


def llm_profiles(batcher: ReplyBatcher, settings: ProfileSettings, inputs: ProfileInputs, kind: str,
                 tokens: List[str]) -> List[str]:
    """One LLM profile per user (``kind`` "user") or item token; a user without history gets an empty one."""
    if kind == "item":
        return _profiles(batcher, [item_prompt(settings, inputs, token) for token in tokens], "LLM item profiles")
    active = [token for token in tokens if inputs.history.items.get(token)]
    prompts = [user_prompt(settings, inputs, token) for token in active]
    replies = dict(zip(active, _profiles(batcher, prompts, "LLM user profiles")))
    return [replies.get(token, "") for token in tokens]


def _profiles(batcher: ReplyBatcher, prompts: Sequence[str], description: str) -> List[str]:
    return [single_line(reply) for reply in batcher(prompts, description)]
