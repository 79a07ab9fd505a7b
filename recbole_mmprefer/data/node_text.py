"""Node text of a run (paper section 3.4): user profiles, item profiles and item titles by token.

Profiles come from the run's node profile files (the profiles stage's copies
once it ran, else the data set's ``.user`` / ``.item``; see
:func:`recbole_mmprefer.artifacts.node_profile_folder`), titles from the first
``text_fields`` field of the data set's ``.item``. The retriever's drawings, the
explainer's prompts and the pipeline report all read node text from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

from recbole_mmprefer.artifacts import dataset_file, node_profile_folder
from recbole_mmprefer.data.atomic import read_atomic_file
from recbole_mmprefer.data.explanations import read_node_profiles
from recbole_mmprefer.resources import stage_setting
from recbole_mmprefer.utils import json_sha256


@dataclass
class NodeText:
    """User profiles, item profiles and item titles by token."""

    user_profiles: Dict[str, str] = field(default_factory=dict)
    item_profiles: Dict[str, str] = field(default_factory=dict)
    titles: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config) -> "NodeText":
        """The run's node profiles and the data set's titles."""
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

    def fingerprint(self) -> str:
        """A hash of every text (stages that prompt with it record it in their input hash)."""
        return json_sha256([self.user_profiles, self.item_profiles, self.titles])


def read_titles(config) -> Dict[str, str]:
    """Titles by item token: the first of ``text_fields`` in ``<data_path>/<dataset>.item`` ({} without one)."""
    item_file = dataset_file(config, "item")
    title_field = (stage_setting(config, "text_fields") or [None])[0]
    if not title_field or not item_file.is_file():
        return {}
    items = read_atomic_file(item_file)
    if title_field not in items.columns:
        return {}
    return dict(zip(items[stage_setting(config, "ITEM_ID_FIELD")], items[title_field]))
