"""The grounding score: the share of an explanation's content words found in the pair's inputs."""

from __future__ import annotations

import math

import pandas as pd

from recbole_mmprefer.data.node_text import NodeText
from recbole_mmprefer.evaluation.grounding import content_words, grounding, grounding_scores, pair_inputs

INPUTS = ["Toy Story (1995)", "Animation, Children's, Comedy. Toys come to life when nobody watches.",
          "Likes animated comedies and family films from the nineties."]


def test_a_copied_input_scores_one_and_an_invented_sentence_low():
    assert grounding("Toys come to life when nobody watches.", INPUTS) == 1.0
    assert grounding(INPUTS[2], INPUTS) == 1.0
    invented = "A gritty Japanese war documentary about submarines, released in 1971."
    assert grounding(invented, INPUTS) == 0.0
    mixed = "The user would enjoy this animated comedy about toys, a Japanese documentary."
    assert 0.3 < grounding(mixed, INPUTS) < 0.8  # animated, comedy, toy grounded; japanese, documentary not


def test_content_words_drop_stop_words_and_scaffolding_and_match_plurals():
    assert content_words("The user would enjoy these stories and movies, as they like toys.") == [
        "stories", "movies", "toys"]
    assert grounding("Stories of a toy.", ["A story about toys."]) == 1.0
    assert grounding("An invented year: 1971.", INPUTS) == 0.0 and grounding("From 1995.", INPUTS) == 1.0
    assert math.isnan(grounding("The user would enjoy it.", INPUTS))  # no claim at all


def test_scores_per_pair_use_each_pairs_own_inputs_and_its_path_nodes():
    rows = pd.DataFrame([{"user_id": "u1", "item_id": "i1", "title": "Toy Story", "user_profile": "",
                          "item_profile": ""},
                         {"user_id": "u2", "item_id": "i2", "title": "Heat", "user_profile": "", "item_profile": ""}])
    records = [{"user_id": "u2", "item_id": "i2", "paths": [{"types": ["user", "item", "user", "item"],
                                                             "tokens": ["u2", "i7", "u9", "i2"]}]}]
    text = NodeText(user_profiles={"u9": "Watches crime thrillers."}, item_profiles={"i7": "A bank robbery."},
                    titles={"i7": "Ronin"})
    inputs = pair_inputs(rows, records, text)
    assert inputs[1] == ["Heat", "A bank robbery.", "Ronin", "Watches crime thrillers."]
    result = grounding_scores(["A story about robots.", "A crime thriller with a bank robbery, like Ronin."], inputs)
    assert list(result.per_sample) == [0.5, 1.0] and result.mean == 0.75
    assert grounding_scores(["A crime thriller with a bank robbery."], inputs[:1]).mean == 0.0
