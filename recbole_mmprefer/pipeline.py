"""`mmprefer run`: every MMP-Refer stage in order (paper section 3, Fig. 2), each skipped when up to date.

1. item features and semantic IDs, then MMPSASRec and its user/item vectors
   (``run_recbole``; skipped when ``<run_dir>/recommender/`` exists, unless forced);
2. template profiles when the data set has none;
3. the pairs to explain: the explanation table's ``pipeline_split`` rows, or
   for a data set without explanations (ml-100k) the last interaction of the
   first ``pipeline_pairs`` users in token order;
4. retrieval paths for those pairs;
5. the explainer: trained on the train split when the data set has
   explanations, otherwise zero-shot (frozen LLM, text paths);
6. generation, and the evaluation when references exist;
7. a report (``<run_dir>/report/report.md`` and ``report.html``) with a few
   pairs: their paths drawn, the explanation, the reference and the scores.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from recbole_mmprefer.config import run_dir
from recbole_mmprefer.data.atomic import atomic_file_path, in_time_order, is_last_of_user, read_atomic_file
from recbole_mmprefer.data.explanations import explanation_table_path, read_explanation_table, read_node_profiles
from recbole_mmprefer.data.profiles import build_profiles, node_profile_folder
from recbole_mmprefer.utils import atomic_directory, write_lines

logger = logging.getLogger(__name__)


def ensure_recommender(config, force: bool) -> None:
    if (run_dir(config) / "recommender" / "meta.json").is_file() and not force:
        logger.info("MMPSASRec vectors are present in %s", run_dir(config) / "recommender")
        return
    from recbole_mmprefer.quick_start import run_recbole

    run_recbole(model="MMPSASRec", dataset=config["dataset"], config_dict=dict(config.external_config_dict))


def ensure_profiles(config) -> None:
    users, items = read_node_profiles(node_profile_folder(config), config["dataset"])
    if users or items:
        return
    build_profiles(config, source="template")


def pairs_to_explain(config) -> Tuple[Optional[str], Optional[Path]]:
    """(split, pair file): a split of the explanation table, or a pair file written for a data set without one."""
    if explanation_table_path(Path(config["data_path"]), config["dataset"]).is_file():
        return config["pipeline_split"], None
    frame = read_atomic_file(atomic_file_path(config, "inter"))
    user, item = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]
    frame = in_time_order(frame, config["TIME_FIELD"])
    last = frame[is_last_of_user(frame, user)]  # the interaction profiles hold out (data/profiles.py)
    users = sorted(last[user].unique(), key=lambda token: (len(token), token))[:config["pipeline_pairs"]]
    chosen = last.set_index(user).loc[users, item]
    pair_file = run_dir(config) / "pipeline" / "pairs.tsv"
    pair_file.parent.mkdir(parents=True, exist_ok=True)
    write_lines(pair_file, ["user_id\titem_id", *[f"{u}\t{i}" for u, i in chosen.items()]])
    return None, pair_file


def run_pipeline(config, force: bool = False) -> Path:
    """All stages for ``config["dataset"]``; returns the report folder."""
    from recbole_mmprefer.explainer.generate import generate_explanations
    from recbole_mmprefer.explainer.train import train_explainer
    from recbole_mmprefer.retrieval.collect import collect_paths

    ensure_recommender(config, force)
    ensure_profiles(config)
    split, pair_file = pairs_to_explain(config)
    collect_paths(config, split=split, pairs_file=pair_file)
    has_table = pair_file is None
    model_dir = None
    if has_table and config["pipeline_train"]:
        model_dir = train_explainer(config)
    generations = generate_explanations(config, model_dir=model_dir, split=split)
    evaluation = None
    if has_table:
        from recbole_mmprefer.evaluation.evaluate import evaluate

        evaluation = evaluate(config, {"mmp-refer": generations}, split=split)
    return write_pipeline_report(config, generations, evaluation)


def write_pipeline_report(config, generations: Path, evaluation: Optional[Path]) -> Path:
    """report.md and report.html: the first ``pipeline_report_pairs`` pairs with paths, drawings and texts."""
    from recbole_mmprefer.evaluation.systems import read_generations
    from recbole_mmprefer.explainer.prompts import NodeText
    from recbole_mmprefer.retrieval.collect import load_graph, paths_dir, read_paths
    from recbole_mmprefer.retrieval.paths import PathResult, RetrievalPath
    from recbole_mmprefer.retrieval.show import describe, svg

    graph, text = load_graph(config), NodeText.from_config(config)
    records = {(r["user_id"], r["item_id"]): r for r in read_paths(paths_dir(config))}
    explained = read_generations(generations).head(config["pipeline_report_pairs"])
    references = _references(config)
    sections: List[Dict[str, str]] = []
    for user, item, explanation in explained.itertuples(index=False, name=None):
        record = records[(user, item)]
        result = PathResult(user=user, item=item, status=record["status"],
                            paths=[RetrievalPath(tuple(p["nodes"]), tuple(p["types"]), tuple(p["tokens"]), p["cost"])
                                   for p in record["paths"]],
                            subgraph_nodes=record["subgraph_nodes"], subgraph_edges=record["subgraph_edges"])
        sections.append({"pair": f"user {user}, item {item}", "paths": describe(result, text),
                         "svg": svg(graph, result, text, size=420), "explanation": explanation,
                         "reference": references.get((user, item), "")})
    out_dir = run_dir(config) / "report"
    with atomic_directory(out_dir) as staging:
        (staging / "report.md").write_text(_markdown(config, sections, generations, evaluation), encoding="utf-8")
        (staging / "report.html").write_text(_html(config, sections, evaluation), encoding="utf-8")
    logger.info("Pipeline report: %s", out_dir / "report.html")
    return out_dir


def _references(config) -> Dict[Tuple[str, str], str]:
    path = explanation_table_path(Path(config["data_path"]), config["dataset"])
    if not path.is_file():
        return {}
    table = read_explanation_table(path)
    return dict(zip(zip(table["user_id"], table["item_id"]), table["explanation"]))


def _markdown(config, sections: List[Dict[str, str]], generations: Path, evaluation: Optional[Path]) -> str:
    lines = [f"# MMP-Refer on {config['dataset']}", "", f"Generations: `{generations}`", ""]
    if evaluation is not None:
        lines += [(evaluation / "table.md").read_text(encoding="utf-8"), ""]
    else:
        lines += ["No reference explanations in this data set: the explanations are not scored.", ""]
    for section in sections:
        lines += [f"## {section['pair']}", "", "```", section["paths"], "```", "",
                  f"**Explanation:** {section['explanation']}", ""]
        if section["reference"]:
            lines += [f"**Reference:** {section['reference']}", ""]
    return "\n".join(lines)


def _html(config, sections: List[Dict[str, str]], evaluation: Optional[Path]) -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>MMP-Refer on "
             f"{html.escape(config['dataset'])}</title></head><body><h1>MMP-Refer on "
             f"{html.escape(config['dataset'])}</h1>"]
    if evaluation is not None:
        parts.append(f"<pre>{html.escape((evaluation / 'table.md').read_text(encoding='utf-8'))}</pre>")
    for section in sections:
        parts.append(f"<h2>{html.escape(section['pair'])}</h2>{section['svg']}"
                     f"<pre>{html.escape(section['paths'])}</pre>"
                     f"<p><b>Explanation:</b> {html.escape(section['explanation'])}</p>")
        if section["reference"]:
            parts.append(f"<p><b>Reference:</b> {html.escape(section['reference'])}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
