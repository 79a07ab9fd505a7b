"""`mmprefer run`: every MMP-Refer stage in order (paper section 3, Fig. 2), each skipped when up to date.

1. item features and semantic IDs, then MMPSASRec and its user/item vectors
   (``run_recbole``; skipped when the ``recommender`` artifact was trained
   under the same settings and inputs, unless forced);
2. template profiles when the data set has none (rebuilt when the data set
   changes);
3. the pairs to explain: the explanation table's ``pipeline_split`` rows, or
   for a data set without explanations (ml-100k) the last interaction of the
   first ``pipeline_pairs`` users in token order;
4. retrieval paths for those pairs;
5. the explainer: trained on the train split when the data set has
   explanations, otherwise ``pipeline_explainer``: the adapter shipped in the
   wheel (``bundled``, tuned on the XRec train splits with text paths),
   ``zero-shot`` (the frozen LLM, text paths) or a trained explainer's folder;
6. generation, and the evaluation when references exist;
7. a report (``<run_dir>/report/report.md`` and ``report.html``) with a few
   pairs: their paths drawn, the explanation, the reference and the scores.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from recbole_mmprefer.artifacts import (
    ARTIFACTS,
    dataset_file,
    has_explanation_table,
    node_profile_folder,
    read_meta_at,
)
from recbole_mmprefer.data.atomic import in_time_order, is_last_of_user, read_atomic_file
from recbole_mmprefer.data.explanations import SPLITS, read_node_profiles
from recbole_mmprefer.data.profiles import build_profiles, recorded_run
from recbole_mmprefer.errors import InputError
from recbole_mmprefer.explainer.settings import BUNDLED, ZERO_SHOT
from recbole_mmprefer.retrieval.inputs import write_pair_file
from recbole_mmprefer.settings import StageSettings, check_bool, check_choice, check_int
from recbole_mmprefer.utils import file_sha256, json_sha256

logger = logging.getLogger(__name__)


@dataclass
class PipelineSettings(StageSettings):
    """The ``pipeline_*`` keys of properties/pipeline.yaml, checked."""

    PREFIX = "pipeline_"

    split: str
    pairs: int
    train: bool
    explainer: str
    report_pairs: int

    def __post_init__(self):
        self.split = check_choice("pipeline_split", self.split, SPLITS)
        self.pairs = check_int("pipeline_pairs", self.pairs, 1)
        self.train = check_bool("pipeline_train", self.train)
        self.explainer = check_explainer_choice(self.explainer)
        self.report_pairs = check_int("pipeline_report_pairs", self.report_pairs, 0)


def check_explainer_choice(value) -> str:
    """``pipeline_explainer``: bundled, zero-shot, or an existing folder."""
    text = "" if value is None else str(value).strip()
    if text in (BUNDLED, ZERO_SHOT) or (text and Path(text).expanduser().is_dir()):
        return text
    raise InputError(f"pipeline_explainer must be {BUNDLED}, {ZERO_SHOT} or a trained explainer's folder, got "
                     f"{value!r}" + (f" (no folder {Path(text).expanduser().absolute()})" if text else ""))


def describe_explainer(model_dir: Optional[Path]) -> str:
    """What wrote a run's explanations, for logs and the report."""
    if model_dir is None:
        return "the frozen LLM, zero-shot (no tuning)"
    meta = read_meta_at(model_dir) or {}
    return meta.get("description") or f"the explainer tuned in {model_dir}"


def ensure_recommender(config, force: bool) -> None:
    """MMPSASRec trained unless its vectors were made from the same settings and inputs."""
    from recbole_mmprefer.model.export import recommender_input_hash
    from recbole_mmprefer.quick_start import prepare_item_inputs, run_recbole

    prepare_item_inputs(config)  # the features and semantic IDs it reads, so that their hashes are final
    if not force and ARTIFACTS["recommender"].is_fresh(config, recommender_input_hash(config)):
        logger.info("MMPSASRec vectors are up to date in %s", ARTIFACTS["recommender"].dir(config))
        return
    run_recbole(model="MMPSASRec", dataset=config["dataset"], config_dict=dict(config.external_config_dict))


def ensure_profiles(config) -> None:
    """Template profiles for a data set without any, rebuilt when the data set changes; LLM profiles are kept
    (making them again needs their model or endpoint: `mmprefer profiles --source llm`)."""
    recorded = recorded_run(config)
    if recorded is not None and recorded[0] != "template":
        logger.info("Keeping the %s profiles of %s", recorded[0], ARTIFACTS["profiles"].dir(config))
        return
    if recorded is not None:
        build_profiles(config, source="template", force=recorded[1])  # skipped when up to date
        return
    users, items = read_node_profiles(node_profile_folder(config), config["dataset"])
    if not users and not items:
        build_profiles(config, source="template")


def pairs_to_explain(config, settings: PipelineSettings) -> Tuple[Optional[str], Optional[Path]]:
    """(split, pair file): a split of the explanation table, or a pair file written for a data set without one."""
    if has_explanation_table(config):
        return settings.split, None
    frame = read_atomic_file(dataset_file(config, "inter"))
    user, item = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]
    frame = in_time_order(frame, config["TIME_FIELD"])
    last = frame[is_last_of_user(frame, user)]  # the interaction profiles hold out (data/profiles.py)
    users = sorted(last[user].unique(), key=lambda token: (len(token), token))[:settings.pairs]
    chosen = last.set_index(user).loc[users, item]
    pair_file = ARTIFACTS["pipeline_pairs"].file(config)
    write_pair_file(pair_file, list(chosen.items()))
    return None, pair_file


def run_pipeline(config, force: bool = False) -> Path:
    """All stages for ``config["dataset"]``; returns the report folder."""
    from recbole_mmprefer.explainer.checkpoints import resolve_explainer
    from recbole_mmprefer.explainer.generate import generate_explanations
    from recbole_mmprefer.explainer.train import train_explainer
    from recbole_mmprefer.retrieval.collect import collect_paths

    settings = PipelineSettings.from_config(config)
    ensure_recommender(config, force)
    ensure_profiles(config)
    split, pair_file = pairs_to_explain(config, settings)
    collect_paths(config, split=split, pairs_file=pair_file)
    has_table = pair_file is None
    model_dir = train_explainer(config) if has_table and settings.train else resolve_explainer(settings.explainer)
    logger.info("Explaining with %s", describe_explainer(model_dir))
    generations = generate_explanations(config, model_dir=model_dir, split=split)
    evaluation = None
    if has_table:
        from recbole_mmprefer.evaluation.evaluate import evaluate

        evaluation = evaluate(config, {"mmp-refer": generations}, split=split)
    return write_pipeline_report(config, generations, evaluation, settings.report_pairs,
                                 describe_explainer(model_dir))


def write_pipeline_report(config, generations: Path, evaluation: Optional[Path], pairs: int,
                          explainer: str = "") -> Path:
    """report.md and report.html: the first ``pairs`` pairs with their paths, drawings and texts."""
    from recbole_mmprefer.data.generations import read_generations
    from recbole_mmprefer.data.node_text import NodeText
    from recbole_mmprefer.evaluation.grounding import grounding_scores, pair_inputs
    from recbole_mmprefer.explainer.pair_data import load_optional_table, select_rows
    from recbole_mmprefer.retrieval.collect import read_run_paths
    from recbole_mmprefer.retrieval.inputs import load_graph
    from recbole_mmprefer.retrieval.paths import PathResult
    from recbole_mmprefer.retrieval.show import describe, svg

    graph, text = load_graph(config), NodeText.from_config(config)
    records = {(r["user_id"], r["item_id"]): r for r in read_run_paths(config)}
    explained = read_generations(generations)
    table = load_optional_table(config)
    rows = select_rows(table, [], None, list(zip(explained["user_id"], explained["item_id"])))
    grounding = grounding_scores(list(explained["explanation"]), pair_inputs(rows, list(records.values()), text))
    references = {} if table is None else dict(zip(zip(table["user_id"], table["item_id"]), table["explanation"]))
    sections: List[Dict[str, str]] = []
    for row, (user, item, explanation) in enumerate(explained.head(pairs).itertuples(index=False, name=None)):
        result = PathResult.from_record(records[(user, item)])
        sections.append({"pair": f"user {user}, item {item}", "paths": describe(result, text),
                         "svg": svg(graph, result, text, size=420), "explanation": explanation,
                         "grounding": f"{grounding.per_sample[row]:.2f}",
                         "reference": references.get((user, item), "")})
    summary = (f"Explained by {explainer}. " if explainer else "") + (
               f"Grounding (the share of an explanation's content words found in its pair's inputs: title, profiles, "
               f"path nodes): mean {grounding.mean:.3f}, std {grounding.std:.3f} over {len(explained)} explanations.")
    out_dir = ARTIFACTS["report"].dir(config)
    input_hash = json_sha256({"generations": file_sha256(generations), "sections": sections})
    with ARTIFACTS["report"].writing(config, input_hash, {"generations": str(generations)}) as staging:
        (staging / "report.md").write_text(_markdown(config, sections, generations, evaluation, summary),
                                           encoding="utf-8")
        (staging / "report.html").write_text(_html(config, sections, evaluation, summary), encoding="utf-8")
    logger.info("Pipeline report: %s", out_dir / "report.html")
    return out_dir


def _markdown(config, sections: List[Dict[str, str]], generations: Path, evaluation: Optional[Path],
              summary: str) -> str:
    lines = [f"# MMP-Refer on {config['dataset']}", "", f"Generations: `{generations}`", "", summary, ""]
    if evaluation is not None:
        lines += [(evaluation / "table.md").read_text(encoding="utf-8"), ""]
    else:
        lines += ["No reference explanations in this data set: the explanations are not scored.", ""]
    for section in sections:
        lines += [f"## {section['pair']}", "", "```", section["paths"], "```", "",
                  f"**Explanation:** {section['explanation']}", "", f"**Grounding:** {section['grounding']}", ""]
        if section["reference"]:
            lines += [f"**Reference:** {section['reference']}", ""]
    return "\n".join(lines)


def _html(config, sections: List[Dict[str, str]], evaluation: Optional[Path], summary: str) -> str:
    """The report as one page, in the web app's look: readable width, drawings with their legend, long lines
    wrapped instead of running off the page."""
    from recbole_mmprefer.resources import page_style

    name = html.escape(config["dataset"])
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>MMP-Refer on {name}</title>"
             f"<style>{page_style()}</style></head><body><header><h1>MMP-Refer on {name}</h1>"
             f"<div class='meta'>{html.escape(summary)}</div></header><main class='report'>"]
    if evaluation is not None:
        parts.append("<section class='panel'><h2>Evaluation</h2>"
                     f"<pre>{html.escape((evaluation / 'table.md').read_text(encoding='utf-8'))}</pre></section>")
    for section in sections:
        reference = (f"<p><b>Reference:</b> {html.escape(section['reference'])}</p>" if section["reference"] else "")
        parts.append(f"<section class='panel'><h2>{html.escape(section['pair'])}</h2><div class='pair'><div>"
                     f"<pre>{html.escape(section['paths'])}</pre><p><b>Explanation:</b></p>"
                     f"<div class='explanation'>{html.escape(section['explanation'])}</div>"
                     f"<p><b>Grounding:</b> {section['grounding']}</p>{reference}</div>"
                     f"<div class='drawing'>{section['svg']}</div></div></section>")
    parts.append("</main></body></html>")
    return "\n".join(parts)
