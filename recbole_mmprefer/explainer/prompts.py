"""Prompts of the explainer (paper section 3.4; design sections 3, 9): paths as text, the instruction, token ids.

**Paths as text.** A record of ``paths.jsonl`` (``user_id``, ``item_id``,
``paths``: ``types`` and ``tokens`` from the user to the item) becomes one line
per path, e.g. ``the user -> buys -> Book 3: For readers of 3. -> bought by ->
Likes long novels. -> buys -> Book 9``: the relation is ``buys`` on a
user->item step and ``bought by`` on an item->user step; an inner user node is
shown by its profile (``a user`` without one), an inner item by
``<title>: <profile>`` (its title alone without a profile, ``an item`` without
either). The pair's own ends are shown compactly, as ``the user`` and the
item's title, since their profiles already stand in the prompt.

**The prompt** is ``explainer_instruction`` (the paper's wording by default)
with ``{title}``, ``{item_profile}``, ``{user_profile}`` and ``{paths}``
filled; ``{paths}`` is ``explainer_paths_intro``, the graph soft prompt and the
first ``explainer_paths`` path lines (empty for ``explainer_paths: 0``).

**The graph soft prompt** takes ``explainer_soft_tokens`` positions (default
one per path). The prompt text marks its place with :data:`SOFT_MARKER`
(at ``{graph}`` when the template has it, else right after the paths intro);
tokenisation tokenises the text before and after the marker and puts exactly
that many placeholder ids between them (the pad token's id; no token is added
to the vocabulary). :attr:`Example.soft_positions` gives their indices and
:func:`collate` a ``soft_mask``; the graph adapter writes its vectors into
``inputs_embeds`` there. The count does not depend on the pair (a pair with
fewer paths, or with paths dropped to fit, keeps all its soft positions).

**Token budget.** Prompt + explanation + EOS (training) or prompt +
``explainer_max_new_tokens`` (generation) must fit in ``explainer_max_length``.
A longer prompt loses, in this order: the profiles of the nodes on paths
(shortened from their end, longest first, down to
``explainer_path_profile_min_tokens``, then replaced by the node's placeholder,
the last path's nodes first), whole paths (from the last; the paths left then
get their profiles back and are cut again only as far as needed), then the user and
the item profile (from their end, longest first). The instruction skeleton,
the title and the explanation are never cut; an example whose rest alone is
too long keeps them and reports ``overflow_tokens`` > 0.

**Token ids.** With a chat template (:func:`recbole_mmprefer.llm.chat_text`)
the prompt is the user message and the explanation the assistant reply; without
one the explanation follows ``Explanations:`` after a space. Labels are -100
everywhere but the explanation's tokens and the EOS after them.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from recbole_mmprefer.data.atomic import read_atomic_file
from recbole_mmprefer.data.explanations import read_node_profiles
from recbole_mmprefer.data.profiles import node_profile_folder
from recbole_mmprefer.errors import InputError
from recbole_mmprefer.llm import chat_text
from recbole_mmprefer.resources import stage_setting

SOFT_MARKER = "<|graph_soft_prompt|>"
IGNORE_INDEX = -100
MAX_PATHS = 5
RELATIONS = {"item": "buys", "user": "bought by"}  # relation word by the kind of the node a step arrives at
PLACEHOLDERS = {"user": "a user", "item": "an item"}
TARGET_USER = "the user"
MISSING_PROFILE = "unknown"
TEMPLATE_FIELDS = {"title", "item_profile", "user_profile", "paths", "graph"}
TRUNCATION_KEYS = ("path_profiles_shortened", "path_profiles_dropped", "path_profile_tokens_cut", "paths_dropped",
                   "user_profile_tokens_cut", "item_profile_tokens_cut", "overflow_tokens")


# --------------------------------------------------------------------------- settings

_setting = stage_setting


@dataclass(frozen=True)
class PromptSettings:
    """The prompt keys of ``properties/explainer.yaml``, checked."""

    instruction: str
    paths_intro: str = ""
    paths: int = 3
    soft_tokens: int = 3
    max_length: int = 512
    max_new_tokens: int = 96
    path_profile_min_tokens: int = 8

    def __post_init__(self):
        check_template(self.instruction)
        if not 0 <= self.paths <= MAX_PATHS:
            raise InputError(f"explainer_paths must be an integer in 0..{MAX_PATHS}, got {self.paths}")
        if self.soft_tokens < 0 or self.path_profile_min_tokens < 0:
            raise InputError("explainer_soft_tokens and explainer_path_profile_min_tokens must not be negative")
        if not 0 < self.max_new_tokens < self.max_length:
            raise InputError(f"explainer_max_new_tokens ({self.max_new_tokens}) must be positive and below "
                             f"explainer_max_length ({self.max_length})")

    @classmethod
    def from_config(cls, config=None) -> "PromptSettings":
        """From a RecBole Config or a dict; missing or None keys take the defaults (soft tokens: one per path)."""
        paths = int(_setting(config, "explainer_paths"))
        soft = _setting(config, "explainer_soft_tokens")
        soft = paths if soft is None else int(soft)
        graph_level = config["explainer_graph_level"] if config is not None and "explainer_graph_level" in config \
            else None
        if graph_level is False:  # the "w/o graph-level" ablation: no positions for a soft prompt
            soft = 0
        return cls(instruction=str(_setting(config, "explainer_instruction")),
                   paths_intro=str(_setting(config, "explainer_paths_intro") or ""), paths=paths,
                   soft_tokens=soft,
                   max_length=int(_setting(config, "explainer_max_length")),
                   max_new_tokens=int(_setting(config, "explainer_max_new_tokens")),
                   path_profile_min_tokens=int(_setting(config, "explainer_path_profile_min_tokens")))


def check_template(template: str) -> None:
    """InputError unless the template has {title}, {item_profile}, {user_profile}, {paths} and no other field."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        raise InputError(f"explainer_instruction is not a valid template ({error})") from None
    unknown, missing = names - TEMPLATE_FIELDS, TEMPLATE_FIELDS - {"graph"} - names
    if unknown or missing:
        raise InputError(f"explainer_instruction must hold {{title}}, {{item_profile}}, {{user_profile}} and "
                         f"{{paths}} (optionally {{graph}}) and no other field: unknown {sorted(unknown)}, "
                         f"missing {sorted(missing)} (write literal braces as {{{{ and }}}})")


# --------------------------------------------------------------------------- node text

@dataclass
class NodeText:
    """User profiles, item profiles and item titles by token."""

    user_profiles: Dict[str, str] = field(default_factory=dict)
    item_profiles: Dict[str, str] = field(default_factory=dict)
    titles: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config) -> "NodeText":
        """Profiles of the run (``node_profile_folder``), titles from the first ``text_fields`` field of ``.item``."""
        users, items = read_node_profiles(node_profile_folder(config), config["dataset"])
        return cls(users, items, read_titles(config))

    def title(self, token: str) -> str:
        return self.titles.get(str(token), "")

    def profile(self, kind: str, token: str) -> str:
        return (self.user_profiles if kind == "user" else self.item_profiles).get(str(token), "")

    def label(self, kind: str, token: str) -> str:
        """``user 42`` / ``item 17 "Title"``: a node named for people reading logs."""
        title = self.title(token) if kind == "item" else ""
        return f"{kind} {token}" + (f' "{title}"' if title else "")


def _get(config, key: str, default=None):
    value = config[key] if key in config else None
    return default if value is None else value


def read_titles(config) -> Dict[str, str]:
    """Titles by item token: the first of ``text_fields`` in ``<data_path>/<dataset>.item`` ({} without one)."""
    item_file = Path(config["data_path"]) / f"{config['dataset']}.item"
    title_field = (_get(config, "text_fields") or [None])[0]
    if not title_field or not item_file.is_file():
        return {}
    items = read_atomic_file(item_file)
    if title_field not in items.columns:
        return {}
    return dict(zip(items[_get(config, "ITEM_ID_FIELD", "item_id")], items[title_field]))


# --------------------------------------------------------------------------- clippable text

@dataclass
class Piece:
    """A text that can lose tokens from its end: ``ends`` are the character ends of its tokens."""

    text: str
    ends: List[int]
    keep: int = -1

    def __post_init__(self):
        if self.keep < 0:
            self.keep = len(self.ends)

    @property
    def size(self) -> int:
        return len(self.ends)

    def shown(self) -> str:
        if self.keep >= self.size:
            return self.text
        return self.text[:self.ends[self.keep - 1]].rstrip() if self.keep > 0 else ""


def _clean(text) -> str:
    return " ".join(str(text or "").replace(SOFT_MARKER, " ").split())


def make_pieces(texts: Sequence[str], tokenizer) -> List[Piece]:
    """Pieces with token ends from the tokenizer's offsets (fast tokenizers), else from whitespace-split words."""
    texts = [_clean(text) for text in texts]
    if not texts:
        return []
    try:
        offsets = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    except (NotImplementedError, ValueError, TypeError):
        offsets = [[(match.start(), match.end()) for match in re.finditer(r"\S+", text)] for text in texts]
    return [Piece(text, [end for start, end in spans if end > start]) for text, spans in zip(texts, offsets)]


# --------------------------------------------------------------------------- paths as text

@dataclass
class PathNode:
    kind: str
    name: str  # the item's title ("" for users and untitled items)
    profile: Optional[Piece]  # None for the pair's own ends
    end: bool = False

    def text(self) -> str:
        if self.end:
            return TARGET_USER if self.kind == "user" else (self.name or "the item")
        profile = self.profile.shown() if self.profile is not None else ""
        if self.kind == "user":
            return profile or PLACEHOLDERS["user"]
        if profile:
            return f"{self.name or PLACEHOLDERS['item']}: {profile}"
        return self.name or PLACEHOLDERS["item"]


def path_nodes(path: dict, node_text: NodeText, tokenizer=None) -> List[PathNode]:
    """The nodes of one path record; inner nodes carry their profile as a :class:`Piece`."""
    kinds, tokens = list(path["types"]), [str(token) for token in path["tokens"]]
    if len(kinds) != len(tokens) or len(kinds) < 2:
        raise InputError(f"A path needs as many types as tokens and at least two nodes: {path}")
    profiles = [node_text.profile(kind, token) for kind, token in zip(kinds, tokens)]
    pieces = make_pieces(profiles, tokenizer) if tokenizer is not None else [
        Piece(_clean(text), [m.end() for m in re.finditer(r"\S+", _clean(text))]) for text in profiles]
    last = len(kinds) - 1
    return [PathNode(kind, _clean(node_text.title(token)) if kind == "item" else "",
                     None if step in (0, last) else piece, step in (0, last))
            for step, (kind, token, piece) in enumerate(zip(kinds, tokens, pieces))]


def path_text(nodes: Sequence[PathNode]) -> str:
    """``a -> buys -> b -> bought by -> c ...``."""
    parts = [nodes[0].text()]
    for node in nodes[1:]:
        parts.append(f"-> {RELATIONS[node.kind]} -> {node.text()}")
    return " ".join(parts)


def verbalise_path(path: dict, node_text: NodeText) -> str:
    """One ``paths.jsonl`` path (``types``, ``tokens``) as a line of text, profiles in full."""
    return path_text(path_nodes(path, node_text))


# --------------------------------------------------------------------------- the prompt

@dataclass
class PromptParts:
    """What a prompt is made of; truncation lowers the pieces' ``keep`` and drops paths."""

    title: str
    item_profile: Piece
    user_profile: Piece
    paths: List[List[PathNode]]
    offered_paths: int = 0


def prompt_parts(record: dict, node_text: NodeText, tokenizer, settings: PromptSettings) -> PromptParts:
    """The parts of a record's prompt; a record's own ``title`` / ``user_profile`` / ``item_profile`` win."""
    user, item = str(record["user_id"]), str(record["item_id"])
    title = record.get("title") or node_text.title(item) or f"item {item}"
    item_profile, user_profile = make_pieces([record.get("item_profile") or node_text.profile("item", item),
                                              record.get("user_profile") or node_text.profile("user", user)],
                                             tokenizer)
    paths = [path_nodes(path, node_text, tokenizer) for path in (record.get("paths") or [])[:settings.paths]]
    return PromptParts(_clean(title), item_profile, user_profile, paths, len(paths))


def paths_block(parts: PromptParts, settings: PromptSettings, soft_here: bool) -> str:
    """The intro, the soft prompt's marker (when ``soft_here``) and one line per path; "" when empty."""
    lines = [f"Path {number}: {path_text(nodes)}" for number, nodes in enumerate(parts.paths, start=1)]
    head = settings.paths_intro if lines and settings.paths_intro else ""
    if soft_here:
        head = f"{head} {SOFT_MARKER}".strip()
    return "".join(f"{line}\n" for line in [head, *lines] if line)


def render_prompt(parts: PromptParts, settings: PromptSettings) -> str:
    """The instruction filled in; the soft prompt's place marked by SOFT_MARKER when there is one."""
    soft = settings.soft_tokens > 0
    in_template = "{graph}" in settings.instruction
    return settings.instruction.format(
        title=parts.title, item_profile=parts.item_profile.shown() or MISSING_PROFILE,
        user_profile=parts.user_profile.shown() or MISSING_PROFILE,
        paths=paths_block(parts, settings, soft and not in_template), graph=SOFT_MARKER if soft else "")


# --------------------------------------------------------------------------- truncation

def level_down(pieces: Sequence[Piece], amount: int, floor: int) -> bool:
    """Cut about ``amount`` tokens from the longest pieces first, none below ``floor``; False when none could be."""
    cut = 0
    while cut < amount:
        over = [piece for piece in pieces if piece.keep > floor]
        if not over:
            break
        top = max(piece.keep for piece in over)
        tops = [piece for piece in over if piece.keep == top]
        below = max([piece.keep for piece in over if piece.keep < top] + [floor])
        step = min(top - below, math.ceil((amount - cut) / len(tops)))
        for piece in tops:
            taken = min(step, amount - cut)
            piece.keep -= taken
            cut += taken
    return cut > 0


def _path_pieces(parts: PromptParts) -> List[Piece]:
    return [node.profile for nodes in parts.paths for node in nodes if node.profile is not None]


def shorten_path_profiles(parts: PromptParts, excess: int, settings: PromptSettings) -> bool:
    return level_down(_path_pieces(parts), excess, settings.path_profile_min_tokens)


def drop_path_profiles(parts: PromptParts, excess: int, settings: PromptSettings) -> bool:
    """Replace path nodes' profiles by placeholders, the last path's last node first."""
    saved = 0
    for piece in reversed(_path_pieces(parts)):
        if saved >= excess:
            break
        if piece.keep > 0:
            saved += piece.keep + 1
            piece.keep = 0
    return saved > 0


def drop_path(parts: PromptParts, excess: int, settings: PromptSettings) -> bool:
    """Drop the last path; the others get their profiles back in full (to be fitted again)."""
    if not parts.paths:
        return False
    parts.paths.pop()
    for piece in _path_pieces(parts):
        piece.keep = piece.size
    return True


def shorten_profiles(parts: PromptParts, excess: int, settings: PromptSettings) -> bool:
    return level_down([parts.user_profile, parts.item_profile], excess, 0)


STAGES: Tuple[Callable[[PromptParts, int, PromptSettings], bool], ...] = (
    shorten_path_profiles, drop_path_profiles, drop_path, shorten_profiles)


def fit(parts: PromptParts, settings: PromptSettings, length: Callable[[PromptParts], int], budget: int) -> int:
    """Truncate ``parts`` stage by stage until ``length(parts) <= budget``; returns the tokens still over (>= 0)."""
    excess, stage = length(parts) - budget, 0
    while excess > 0 and stage < len(STAGES):
        if not STAGES[stage](parts, excess, settings):
            stage += 1
            continue
        excess = length(parts) - budget
        if STAGES[stage] is drop_path:
            stage = 0  # the remaining paths' profiles are cut again, only as far as needed
    return max(excess, 0)


def truncation_counts(parts: PromptParts, overflow: int) -> Dict[str, int]:
    """What truncation took from the parts (see TRUNCATION_KEYS)."""
    pieces = _path_pieces(parts)
    return {"path_profiles_shortened": sum(0 < piece.keep < piece.size for piece in pieces),
            "path_profiles_dropped": sum(piece.keep == 0 < piece.size for piece in pieces),
            "path_profile_tokens_cut": sum(piece.size - piece.keep for piece in pieces),
            "paths_dropped": parts.offered_paths - len(parts.paths),
            "user_profile_tokens_cut": parts.user_profile.size - parts.user_profile.keep,
            "item_profile_tokens_cut": parts.item_profile.size - parts.item_profile.keep,
            "overflow_tokens": overflow}


# --------------------------------------------------------------------------- token ids

def uses_chat(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def placeholder_id(tokenizer) -> int:
    """The id at soft-prompt positions: pad, else end-of-text, else unknown, else 0."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if value is not None:
            return int(value)
    return 0


def leading_special_ids(tokenizer) -> List[int]:
    """The ids the tokenizer puts before a text (e.g. BOS), without those it appends."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return list(full[:start])
    return []


def encode_prompt(text: str, tokenizer, soft_tokens: int) -> Tuple[List[int], List[int]]:
    """``(ids, soft_positions)`` of a prompt text: chat-wrapped when the tokenizer has a template; the marker
    becomes ``soft_tokens`` placeholder ids."""
    chat = uses_chat(tokenizer)
    full = chat_text(tokenizer, text) if chat else text
    before, marker, after = full.partition(SOFT_MARKER)
    ids = ([] if chat else leading_special_ids(tokenizer)) + _ids(tokenizer, before)
    positions = list(range(len(ids), len(ids) + soft_tokens)) if marker else []
    ids += [placeholder_id(tokenizer)] * len(positions) + _ids(tokenizer, after)
    return ids, positions


def _ids(tokenizer, text: str) -> List[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def encode_target(explanation: str, tokenizer) -> List[int]:
    """The explanation's ids and EOS: the assistant reply with a chat template, else after a space."""
    text = str(explanation).replace(SOFT_MARKER, " ").strip()
    ids = _ids(tokenizer, text if uses_chat(tokenizer) else f" {text}")
    return ids + ([int(tokenizer.eos_token_id)] if tokenizer.eos_token_id is not None else [])


@dataclass
class Example:
    """One tokenised example; ``labels`` are -100 but on the explanation and its EOS."""

    input_ids: List[int]
    attention_mask: List[int]
    labels: List[int]
    soft_positions: List[int]
    truncation: Dict[str, int]
    prompt_text: str

    def __len__(self) -> int:
        return len(self.input_ids)


def build_example(record: dict, node_text: NodeText, tokenizer, settings: PromptSettings,
                  explanation: Optional[str] = None) -> Example:
    """A ``paths.jsonl`` record as token ids within the budget: for training with ``explanation``, else for
    generation (room left for ``max_new_tokens``)."""
    parts = prompt_parts(record, node_text, tokenizer, settings)
    target = encode_target(explanation, tokenizer) if explanation is not None else []
    budget = settings.max_length - (len(target) if explanation is not None else settings.max_new_tokens)

    def length(current: PromptParts) -> int:
        return len(encode_prompt(render_prompt(current, settings), tokenizer, settings.soft_tokens)[0])

    overflow = fit(parts, settings, length, budget)
    text = render_prompt(parts, settings)
    prompt_ids, positions = encode_prompt(text, tokenizer, settings.soft_tokens)
    return Example(input_ids=prompt_ids + target, attention_mask=[1] * (len(prompt_ids) + len(target)),
                   labels=[IGNORE_INDEX] * len(prompt_ids) + target, soft_positions=positions,
                   truncation=truncation_counts(parts, overflow), prompt_text=text)


def collate(examples: Sequence[Example], pad_id: int, left_pad: bool) -> Dict[str, object]:
    """A padded batch of tensors: ``input_ids``, ``attention_mask``, ``labels`` (-100 at padding),
    ``soft_positions`` (batch x soft tokens, shifted by left padding) and ``soft_mask`` (batch x length)."""
    import torch

    if not examples:
        raise InputError("collate needs at least one example")
    counts = {len(example.soft_positions) for example in examples}
    if len(counts) > 1:
        raise InputError(f"Examples of one batch must have as many soft positions each, got {sorted(counts)}")
    width = max(len(example) for example in examples)
    batch = {"input_ids": [], "attention_mask": [], "labels": [], "soft_positions": []}
    for example in examples:
        pad = width - len(example)
        for key, value in (("input_ids", pad_id), ("attention_mask", 0), ("labels", IGNORE_INDEX)):
            row, filler = getattr(example, key), [value] * pad
            batch[key].append(filler + row if left_pad else row + filler)
        batch["soft_positions"].append([position + (pad if left_pad else 0) for position in example.soft_positions])
    tensors = {key: torch.tensor(rows, dtype=torch.long) for key, rows in batch.items()}
    mask = torch.zeros(tensors["input_ids"].shape, dtype=torch.bool)
    if counts != {0}:
        mask.scatter_(1, tensors["soft_positions"], True)
    tensors["soft_mask"] = mask
    return tensors
