"""ExplainRec's Table III on CPU (issue 16): AUC for new users, new items and across domains.

    python run_scripts/table_coldstart.py [--dataset ml-100k] [--scenarios new_users new_items cross_domain] \
        [--systems tallrec tallrec_k explainrec explainrec_k explainrec_k_meta explainrec_k_meta_0 content \
                   demographic like_share] \
        [--shots 64] [--seeds 0] [--test_samples 500] [--book ../shared/data/tallrec/book/valid.json] \
        [--out results/coldstart_ml-100k.md] [--key=value ...]

Scenarios (each seed draws who is held out and the few-shot set):

* ``new_users``: `mmprefer preferences --cold users` (a held-out user's test
  samples show only their support set); the LLMs are tuned on ``--shots``
  samples of its train split (other users only);
* ``new_items``: `mmprefer preferences --cold items` (held-out items never in
  train or valid);
* ``cross_domain``: tuned on the data set's own windows (movies), scored on
  TALLRec's published book samples (``--book``, imported as they are).

Systems: TALLRec and ExplainRec (the bundled LLM, LoRA, no test-time
adaptation), each with and without the knowledge base K in the prompt (``_k``:
``preference_knowledge``);
ExplainRec with K and Reptile meta-training plus test-time adaptation to each
new user's support set (``_meta``), and the same model scored without
adaptation (``_meta_0``: ``coldstart_adaptation_steps: 0``); the content-based
and demographic-popularity baselines and the history's like share (no
training). Every system of a scenario and seed is scored on the same first
``--test_samples`` test samples. Every AUC goes to ``results/coldstart_<dataset>.json`` as it is
measured, with a digest of the settings it depends on, and a rerun skips what
is there under the same settings, so the table can span sessions.
Reported: AUC per scenario and system (mean and std over seeds), and paired
bootstraps of ExplainRec + K + meta against TALLRec and against the
content-based baseline.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from table_preference import bootstrap_if_due, kept_notes, record_run, write_ledger  # noqa: E402  (the same machinery as Table 1's)

SCENARIOS = {"new_users": "cold-users", "new_items": "cold-items", "cross_domain": "windows"}
NO_ADAPTATION = {"coldstart_adaptation_steps": 0}  # only the meta-learned system adapts to a new user's support set
LLM_SYSTEMS = {
    "tallrec": ("TALLRec", {"preference_system": "tallrec", **NO_ADAPTATION}),
    "tallrec_k": ("TALLRec + K", {"preference_system": "tallrec", "preference_knowledge": True, **NO_ADAPTATION}),
    "explainrec": ("ExplainRec", {"preference_system": "explainrec", **NO_ADAPTATION}),
    "explainrec_k": ("ExplainRec + K", {"preference_system": "explainrec", "preference_knowledge": True,
                                        **NO_ADAPTATION}),
    "explainrec_k_meta": ("ExplainRec + K + meta", {"preference_system": "explainrec", "preference_knowledge": True,
                                                     "coldstart_meta_steps": 32}),
    "explainrec_k_meta_0": ("ExplainRec + K + meta, no adaptation", {
        "preference_system": "explainrec", "preference_knowledge": True, "coldstart_meta_steps": 32,
        "coldstart_adaptation_steps": 0}),
}
BASELINES = {"content": "content-based", "demographic": "demographic popularity", "like_share": "history like share"}
OURS = "explainrec_k_meta"


def config_for(dataset: str, **keys):
    from recbole_mmprefer.config import Config

    return Config(model="MMPSASRec", dataset=dataset, config_dict=keys)


def test_samples(args, config, scenario: str) -> Tuple[str, List[dict]]:
    """(the samples' name, the first --test_samples test samples) of a scenario."""
    from recbole_mmprefer.data.preferences import import_preferences, read_preferences

    if scenario == "cross_domain":
        folder = import_preferences(config, Path(args.book), split="test", name="tallrec-book", match_titles=False)
        name = folder.name
    else:
        name = SCENARIOS[scenario]
    return name, [s for s in read_preferences(config, name) if s["split"] == "test"][:args.test_samples]


def build_samples(config, scenario: str) -> str:
    from recbole_mmprefer.data.cold_start import build_cold_start
    from recbole_mmprefer.data.preferences import build_preferences

    if scenario == "cross_domain":
        return Path(build_preferences(config)).name
    return Path(build_cold_start(config, scenario.split("_")[1])).name


def trained_system(system: str) -> str:
    """The system whose model ``system`` scores: the _meta_0 row scores the _meta model (trained under _meta's
    settings) without test-time adaptation."""
    return OURS if system == "explainrec_k_meta_0" else system


def llm_configs(args, scenario: str, system: str, seed: int):
    """(the configuration ``system`` is tuned with, the one it is scored with)."""
    keys = {"knowledge_source": "windows"} if scenario == "cross_domain" else {}  # books have no train split
    return tuple(config_for(args.dataset, preference_shots=args.shots, preference_shot_seed=seed, coldstart_seed=seed,
                            **keys, **LLM_SYSTEMS[name][1]) for name in (trained_system(system), system))


def baseline_config(args, seed: int):
    return config_for(args.dataset, preference_shot_seed=seed, coldstart_seed=seed)


def run_fingerprint(args, scenario: str, system: str, seed: int) -> str:
    """A digest of every setting a run's AUC depends on: a ledger entry with another digest is measured again."""
    from recbole_mmprefer.data.cold_start import ColdStartSettings
    from recbole_mmprefer.data.preferences import PreferenceSettings
    from recbole_mmprefer.preference.knowledge import KnowledgeSettings
    from recbole_mmprefer.preference.meta import AdaptationSettings
    from recbole_mmprefer.preference.settings import PreferenceModelConfig, PreferenceTrainingSettings
    from recbole_mmprefer.utils import json_sha256

    training, scoring = llm_configs(args, scenario, system, seed) if system in LLM_SYSTEMS else \
        (baseline_config(args, seed),) * 2
    keys = {"scenario": scenario, "system": system, "seed": seed, "test_samples": args.test_samples,
            "book": Path(args.book).name if scenario == "cross_domain" else None,
            "samples": PreferenceSettings.from_config(training).to_config(),
            "cold_start": ColdStartSettings.from_config(training).to_config(),
            "knowledge": KnowledgeSettings.from_config(scoring).to_config()}
    if system in LLM_SYSTEMS:
        keys.update(model=PreferenceModelConfig.from_config(training).to_config(),
                    training=PreferenceTrainingSettings.from_config(training).results_keys(),
                    adaptation=AdaptationSettings.from_config(scoring).to_config())
    return json_sha256(keys)


def is_measured(ledger: dict, key: str, system: str, fingerprint: str) -> bool:
    """Whether the ledger holds ``key`` under these settings. Entries from before digests: a baseline's is kept
    (it tunes nothing), a tuned system's is measured again (the tuning budget has changed since)."""
    run = ledger["runs"].get(key)
    if run is None:
        return False
    return run.get("settings", None if system in LLM_SYSTEMS else fingerprint) == fingerprint


def llm_scores(args, scenario: str, system: str, seed: int) -> Tuple[List[int], List[float]]:
    from recbole_mmprefer.artifacts import run_dir
    from recbole_mmprefer.data.features import build_features
    from recbole_mmprefer.jsonl import read_records
    from recbole_mmprefer.preference.score import score_preferences
    from recbole_mmprefer.preference.train import train_preference_model

    training, scoring = llm_configs(args, scenario, system, seed)
    trained = trained_system(system)
    if training["preference_system"] == "explainrec" and training["explainrec_multimodal"]:
        for modality in training["modalities"]:
            build_features(training, modality)
    train_name = build_samples(training, scenario)
    scored_name, _ = test_samples(args, scoring, scenario)
    base = Path(run_dir(training)) / "coldstart_table"
    model_dir = train_preference_model(training, base / "models" / f"{scenario}-{trained}-seed{seed}",
                                       samples_name=train_name)
    out = score_preferences(scoring, model_dir, "test", base / "scores" / f"{scenario}-{system}-seed{seed}.jsonl",
                            samples_name=scored_name, max_samples=args.test_samples)
    rows = read_records(out)
    return [row["label"] for row in rows], [row["p_yes"] for row in rows]


def baseline_scores(args, scenario: str, system: str, seed: int) -> Tuple[List[int], List[float]]:
    from recbole_mmprefer.data.features import TextEncoder, build_features
    from recbole_mmprefer.data.preferences import read_preferences
    from recbole_mmprefer.preference import cold_baselines
    from recbole_mmprefer.preference.knowledge import KnowledgeBase, build_knowledge

    stage = baseline_config(args, seed)
    train_name = build_samples(stage, scenario)
    _, test = test_samples(args, stage, scenario)
    labels = [s["label"] for s in test]
    if system == "like_share":
        return labels, cold_baselines.like_share_scores(test)
    if system == "demographic":
        knowledge = KnowledgeBase.load(stage, build_knowledge(stage, train_name, read_preferences(stage, train_name)))
        return labels, cold_baselines.demographic_scores(test, knowledge)
    if scenario == "cross_domain":  # books are not in the feature store: their titles, by the same encoder
        titles = sorted({s["title"] for s in test} | {h["title"] for s in test for h in s["history"]})
        features = dict(zip(titles, TextEncoder().encode(titles)))
        test = [{**s, "item_id": s["title"], "history": [{**h, "item_id": h["title"]} for h in s["history"]]}
                for s in test]
    else:
        build_features(stage, "text")
        features = cold_baselines.feature_table(stage)
    return labels, cold_baselines.content_scores(test, features)


def ledger_path(args) -> Path:
    return Path(args.out or HERE.parent / "results" / f"coldstart_{args.dataset}.md").with_suffix(".json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--systems", nargs="+", default=[*LLM_SYSTEMS, *BASELINES], choices=[*LLM_SYSTEMS, *BASELINES])
    parser.add_argument("--shots", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--test_samples", type=int, default=500)
    parser.add_argument("--book", default=str(HERE.parent.parent / "shared" / "data" / "tallrec" / "book" /
                                              "valid.json"))
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--out", default=None)
    args, overrides = parser.parse_known_args()
    command = "python run_scripts/table_coldstart.py " + " ".join(sys.argv[1:])
    sys.argv = [sys.argv[0], *overrides]
    if "cross_domain" in args.scenarios and not Path(args.book).is_file():
        print(f"cross_domain skipped: TALLRec's book samples are not at {args.book} (--book)")
        args.scenarios = [s for s in args.scenarios if s != "cross_domain"]
    from recbole.utils import init_logger

    init_logger(config_for(args.dataset))  # the stages' progress and where their files went
    path = ledger_path(args)
    ledger = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if ledger.get("settings") != {"shots": args.shots, "test_samples": args.test_samples}:
        ledger = {"settings": {"shots": args.shots, "test_samples": args.test_samples}, "runs": {}, "bootstrap": {}}
    for seed in args.seeds:
        for scenario in args.scenarios:
            for system in args.systems:
                key = f"{scenario}|{system}|{seed}"
                fingerprint = run_fingerprint(args, scenario, system, seed)
                if is_measured(ledger, key, system, fingerprint):
                    continue
                labels, scores = (baseline_scores if system in BASELINES else llm_scores)(args, scenario, system, seed)
                record_run(ledger, key, labels, scores, fingerprint)
                write_ledger(path, ledger)
                print(f"seed {seed}, {scenario}, {system}: AUC {ledger['runs'][key]['auc']:.4f}", flush=True)
            for other in ("tallrec", "content"):
                if bootstrap_if_due(ledger, f"{scenario}|{other}|{seed}", f"{scenario}|{OURS}|{seed}",
                                    f"{scenario}|{other}|{seed}", args.bootstrap, seed):
                    write_ledger(path, ledger)
    write_report(args, command, ledger)


def stale_runs(args, ledger: dict) -> List[str]:
    """The ledger's runs measured under other settings than today's (left out of the table until measured again)."""
    stale = []
    for key in ledger["runs"]:
        scenario, system, seed = key.split("|")
        if not is_measured(ledger, key, system, run_fingerprint(args, scenario, system, int(seed))):
            stale.append(key)
    return stale


def paired_runs(pair: str) -> set:
    """The two runs a bootstrap entry ``scenario|other|seed`` compares: ours and the other's."""
    scenario, other, seed = pair.split("|")
    return {f"{scenario}|{OURS}|{seed}", f"{scenario}|{other}|{seed}"}


def write_report(args, command: str, ledger: dict) -> None:
    labels = {**{name: label for name, (label, _) in LLM_SYSTEMS.items()}, **BASELINES}
    stale = stale_runs(args, ledger)
    current = {key: run for key, run in ledger["runs"].items() if key not in stale}
    cells: Dict[Tuple[str, str], List[float]] = {}
    for key, run in current.items():
        scenario, system, _ = key.split("|")
        cells.setdefault((scenario, system), []).append(run["auc"])
    seeds = sorted({key.split("|")[2] for key in current})
    scenarios = [s for s in SCENARIOS if any(scenario == s for scenario, _ in cells)]
    lines = [f"# Cold start on {args.dataset}: AUC for new users, new items and across domains", "",
             f"{ledger['settings']['shots']} train samples per tuned system, the first "
             f"{ledger['settings']['test_samples']} test samples per scenario; mean ± population std over the seeds "
             f"measured ({', '.join(seeds)}).", "",
             "| system | " + " | ".join(s.replace("_", " ") for s in scenarios) + " |",
             "|---|" + "---|" * len(scenarios)]
    for system in [*LLM_SYSTEMS, *BASELINES]:
        row = [f"{np.mean(cells[(s, system)]):.4f} ± {np.std(cells[(s, system)]):.4f}" if (s, system) in cells
               else "" for s in scenarios]
        if any(row):
            lines.append(f"| {labels[system]} | " + " | ".join(row) + " |")
    bootstraps = {pair: test for pair, test in ledger["bootstrap"].items() if not paired_runs(pair) & set(stale)}
    if bootstraps:
        lines += ["", f"Paired bootstrap, {labels[OURS]} minus the other (same test samples):", "",
                  "| scenario | other | seed | AUC difference | 95% interval | share <= 0 |",
                  "|---|---|---|---|---|---|"]
        for pair, test in sorted(bootstraps.items()):
            scenario, other, seed = pair.split("|")
            lines.append(f"| {scenario} | {labels[other]} | {seed} | {test['difference']:+.4f} | "
                         f"[{test['low']:+.4f}, {test['high']:+.4f}] | {test['p_not_better']:.3f} |")
    if stale:
        lines += ["", f"Not shown, measured under other settings than today's (the same command measures them "
                      f"again): {', '.join(stale)}."]
    lines += ["", "Target: ExplainRec + K + meta above the content-based baseline and TALLRec on new users and new "
              "items; above TALLRec across domains.", "", f"Every figure: {ledger_path(args).name}", "",
              f"Command (last run): `{command.strip()}`", ""]
    out = Path(args.out or HERE.parent / "results" / f"coldstart_{args.dataset}.md")
    out.write_text("\n".join(lines) + kept_notes(out), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
