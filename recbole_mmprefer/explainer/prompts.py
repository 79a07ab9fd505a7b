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
first ``explainer_paths`` path lines (empty for ``explainer_paths: 0``), then,
where the paths were retrieved with G-Refer's node retrieval
(``path_node_retrieval``), ``explainer_related_intro`` with the first
``explainer_related_nodes`` related users and items (shown as path nodes are;
their profiles are cut alongside the path nodes' profiles).

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

Token ids, labels and batches are in :mod:`.tokens`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from recbole_mmprefer.data.node_text import NodeText
from recbole_mmprefer.errors import InputError
from recbole_mmprefer.explainer.settings import PromptSettings

SOFT_MARKER = "<|graph_soft_prompt|>"
RELATIONS = {"item": "buys", "user": "bought by"}  # relation word by the kind of the node a step arrives at
PLACEHOLDERS = {"user": "a user", "item": "an item"}
TARGET_USER = "the user"
MISSING_PROFILE = "unknown"


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
    related: Dict[str, List[PathNode]] = field(default_factory=dict)  # node retrieval's "users" and "items"


def prompt_parts(record: dict, node_text: NodeText, tokenizer, settings: PromptSettings) -> PromptParts:
    """The parts of a record's prompt; a record's own ``title`` / ``user_profile`` / ``item_profile`` win."""
    user, item = str(record["user_id"]), str(record["item_id"])
    title = record.get("title") or node_text.title(item) or f"item {item}"
    item_profile, user_profile = make_pieces([record.get("item_profile") or node_text.profile("item", item),
                                              record.get("user_profile") or node_text.profile("user", user)],
                                             tokenizer)
    paths = [path_nodes(path, node_text, tokenizer) for path in (record.get("paths") or [])[:settings.paths]]
    return PromptParts(_clean(title), item_profile, user_profile, paths, len(paths),
                       related_nodes(record, node_text, tokenizer, settings.related_nodes))


def related_nodes(record: dict, node_text: NodeText, tokenizer, count: int) -> Dict[str, List[PathNode]]:
    """The first ``count`` related users and items of a record (node retrieval), as nodes with profiles."""
    related = record.get("related") or {}
    chosen = [("user", str(token)) for token in (related.get("users") or [])[:count]]
    chosen += [("item", str(token)) for token in (related.get("items") or [])[:count]]
    if not chosen:
        return {}
    pieces = make_pieces([node_text.profile(kind, token) for kind, token in chosen], tokenizer)
    nodes: Dict[str, List[PathNode]] = {"users": [], "items": []}
    for (kind, token), piece in zip(chosen, pieces):
        nodes[f"{kind}s"].append(PathNode(kind, _clean(node_text.title(token)) if kind == "item" else "", piece))
    return nodes


def related_block(parts: PromptParts, settings: PromptSettings) -> str:
    """The related-nodes lines (``explainer_related_intro`` filled); "" without related nodes."""
    if not any(parts.related.values()):
        return ""
    users, items = ("; ".join(node.text() for node in parts.related.get(kind, [])) or "none"
                    for kind in ("users", "items"))
    return settings.related_intro.format(users=users, items=items).strip() + "\n"


def paths_block(parts: PromptParts, settings: PromptSettings, soft_here: bool) -> str:
    """The intro, the soft prompt's marker (when ``soft_here``) and one line per path; "" when empty."""
    lines = [f"Path {number}: {path_text(nodes)}" for number, nodes in enumerate(parts.paths, start=1)]
    head = settings.paths_intro if lines and settings.paths_intro else ""
    if soft_here:
        head = f"{head} {SOFT_MARKER}".strip()
    return "".join(f"{line}\n" for line in [head, *lines] if line) + related_block(parts, settings)


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
    """The profiles of the path nodes and of the related nodes: they are cut first, and alike."""
    nodes = [node for path in parts.paths for node in path] + [node for kind in parts.related.values()
                                                              for node in kind]
    return [node.profile for node in nodes if node.profile is not None]


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
    """What truncation took from the parts, by kind (counts of profiles, paths and tokens)."""
    pieces = _path_pieces(parts)
    return {"path_profiles_shortened": sum(0 < piece.keep < piece.size for piece in pieces),
            "path_profiles_dropped": sum(piece.keep == 0 < piece.size for piece in pieces),
            "path_profile_tokens_cut": sum(piece.size - piece.keep for piece in pieces),
            "paths_dropped": parts.offered_paths - len(parts.paths),
            "user_profile_tokens_cut": parts.user_profile.size - parts.user_profile.keep,
            "item_profile_tokens_cut": parts.item_profile.size - parts.item_profile.keep,
            "overflow_tokens": overflow}
