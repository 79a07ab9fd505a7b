"""TALLRec's Table 1 for ExplainRec (issue 13): AUC against shots for the LLM systems and RecBole's sequential models.

    python run_scripts/table_preference.py [--dataset ml-100k] [--shots 16 64 256] [--seeds 0 1 2] \
        [--systems zero_shot tallrec explainrec no_attribution no_summary no_multimodal no_multitask SASRec GRU4Rec \
                   like_share] \
        [--test_samples 1000] [--out results/preference_ml-100k.md] [--key=value ...]

Preference samples by TALLRec's protocol (`mmprefer preferences`); for each seed
the few-shot training sets are the first 16 / 64 / 256 train samples in the order
shuffled by that seed (``preference_shot_seed``), the same for every system.
Every system is scored on the same first ``--test_samples`` test windows: the
frozen LLM (zero-shot), TALLRec, ExplainRec and its ablations (LoRA-tuned, the
bundled LLM unless ``--llm_path``), and RecBole's SASRec and GRU4Rec trained
with BCE on the same few-shot samples (``--conventional_epochs``), and the
share of liked items in each window's history (``like_share``: no training,
the bar set by what the two lists say by themselves). Models and
scores land under ``<run_dir>/preference_table/``; a rerun skips what is up to
date; every AUC, its per-window scores and the bootstraps also go to
``results/preference_<dataset>.json`` as they are measured, with a digest of
the settings, and a later run (a later
session, without saved/) reuses what is there unless the settings changed, so
the table can be built a seed at a time. Reported: AUC
(mean and population std over seeds) per system and shot count, a PNG of AUC
against shots, and a paired bootstrap of ExplainRec against TALLRec on the
same test windows (``--bootstrap`` resamples) per shot count and seed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

HERE = Path(__file__).resolve().parent
EXPLAINREC = {"preference_system": "explainrec"}
# The defaults ExplainRec was first measured with (results/preference_ml-100k_6epochs_lr1e-3.md, sessions 9-13):
# the diagnostic runs pin them, so that their digests hold whatever the defaults become.
FIRST_DEFAULTS = {**EXPLAINREC, "explainrec_soft_prompt_start": "random", "explainrec_rating_head": "linear",
                  "explainrec_task_weighting": "uncertainty"}
# ExplainRec's defaults since session 13, pinned for the diagnostics measured with them.
SECOND_DEFAULTS = {**EXPLAINREC, "explainrec_soft_prompt_start": "neutral", "explainrec_rating_head": "ordinal",
                   "explainrec_task_weighting": "fixed"}
LLM_SYSTEMS = {
    "tallrec": ("TALLRec", {"preference_system": "tallrec"}),
    "explainrec": ("ExplainRec", EXPLAINREC),
    "no_attribution": ("ExplainRec w/o attribution", {**EXPLAINREC, "explainrec_attribution": False}),
    "no_summary": ("ExplainRec w/o history summary", {**EXPLAINREC, "explainrec_history_summary": False}),
    "no_multimodal": ("ExplainRec w/o multimodal", {**EXPLAINREC, "explainrec_multimodal": False}),
    "no_multitask": ("ExplainRec w/o multi-task", {**EXPLAINREC, "explainrec_multitask": False}),
}
DIAGNOSTIC_SYSTEMS = {
    "first_explainrec": ("ExplainRec, first defaults", FIRST_DEFAULTS),
    "first_no_attribution": ("ExplainRec w/o attribution, first defaults",
                             {**FIRST_DEFAULTS, "explainrec_attribution": False}),
    "first_no_multimodal": ("ExplainRec w/o multimodal, first defaults",
                            {**FIRST_DEFAULTS, "explainrec_multimodal": False}),
    "first_no_multitask": ("ExplainRec w/o multi-task, first defaults",
                           {**FIRST_DEFAULTS, "explainrec_multitask": False}),
    # all three off: TALLRec's prompt through ExplainRec's code, trained on L_pred alone (the shared path's check)
    "bare": ("ExplainRec w/o all three", {**FIRST_DEFAULTS, "explainrec_attribution": False,
                                          "explainrec_multimodal": False, "explainrec_multitask": False}),
    # one component at a time on that base
    "only_attribution": ("ExplainRec, attribution only", {**FIRST_DEFAULTS, "explainrec_multimodal": False,
                                                          "explainrec_multitask": False}),
    "only_multimodal": ("ExplainRec, multimodal only", {**FIRST_DEFAULTS, "explainrec_attribution": False,
                                                        "explainrec_multitask": False}),
    "only_multitask": ("ExplainRec, multi-task only", {**FIRST_DEFAULTS, "explainrec_attribution": False,
                                                       "explainrec_multimodal": False}),
    "only_multitask_margin": ("ExplainRec, multi-task only, margin rating head", {
        **FIRST_DEFAULTS, "explainrec_attribution": False, "explainrec_multimodal": False,
        "explainrec_rating_head": "margin"}),
    "only_multitask_margin_fixed": ("ExplainRec, multi-task only, margin rating head, fixed weights", {
        **FIRST_DEFAULTS, "explainrec_attribution": False, "explainrec_multimodal": False,
        "explainrec_rating_head": "margin", "explainrec_task_weighting": "fixed"}),
    # the soft tokens' start, the rating head and the task weights, with every component on
    "no_multitask_neutral": ("ExplainRec w/o multi-task, neutral start", {
        **FIRST_DEFAULTS, "explainrec_multitask": False, "explainrec_soft_prompt_start": "neutral"}),
    "neutral_margin_fixed": ("ExplainRec, neutral start, margin rating head, fixed weights", {
        **FIRST_DEFAULTS, "explainrec_soft_prompt_start": "neutral", "explainrec_rating_head": "margin",
        "explainrec_task_weighting": "fixed"}),
    "neutral_margin_fixed_mid": ("ExplainRec, neutral start, margin rating head, fixed weights, rating centre 3.5", {
        **FIRST_DEFAULTS, "explainrec_soft_prompt_start": "neutral", "explainrec_rating_head": "margin",
        "explainrec_task_weighting": "fixed", "explainrec_rating_center": 3.5}),
    "neutral_ordinal_fixed": ("ExplainRec, neutral start, ordinal rating head, fixed weights", {
        **FIRST_DEFAULTS, "explainrec_soft_prompt_start": "neutral", "explainrec_rating_head": "ordinal",
        "explainrec_task_weighting": "fixed"}),
    # the knowledge base K of the cold-start table (issue 16) in a warm prompt: the target's like rate among the
    # train split's users, which the history's lists do not say
    "explainrec_knowledge": ("ExplainRec + knowledge base K", {**SECOND_DEFAULTS, "preference_knowledge": True}),
    "tallrec_knowledge": ("TALLRec + knowledge base K", {"preference_system": "tallrec", "preference_knowledge": True}),
}
LLM_SYSTEMS.update(DIAGNOSTIC_SYSTEMS)
# Settings added after the ledger began, at the value every earlier run had: left out of a run's digest while they
# keep that value, so that earlier runs stay valid.
LATER_SETTINGS = {"explainrec_soft_prompt_start": "random", "explainrec_rating_head": "linear",
                  "explainrec_rating_levels": [1.0, 2.0, 3.0, 4.0, 5.0]}
# Settings that act only under a switch: with the switch off they are digested at one value (the one every
# earlier run had), whatever they are set to.
INERT_UNLESS = {"explainrec_soft_prompt_start": ("explainrec_multimodal", "random"),
                "explainrec_rating_head": ("explainrec_multitask", "linear"),
                "explainrec_task_weighting": ("explainrec_multitask", "uncertainty")}
MAIN_SYSTEMS = ("tallrec", "explainrec", "no_attribution", "no_summary", "no_multimodal", "no_multitask")
CONVENTIONAL = ("SASRec", "GRU4Rec")
UNTRAINED = {"like_share": "history like share (no training)"}  # the bar: what the two lists say by themselves
ZERO_SHOT = {"zero_shot": "tallrec", "zero_shot_explainrec": "explainrec"}  # the frozen LLM, with each prompt


def parse_arguments() -> Tuple[argparse.Namespace, str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--shots", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--systems", nargs="+", default=["zero_shot", *MAIN_SYSTEMS, *CONVENTIONAL, *UNTRAINED],
                        choices=[*ZERO_SHOT, *LLM_SYSTEMS, *CONVENTIONAL, *UNTRAINED])
    parser.add_argument("--test_samples", type=int, default=1000)
    parser.add_argument("--conventional_epochs", type=int, default=50)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--out", default=None)
    args, overrides = parser.parse_known_args()
    command = "python run_scripts/table_preference.py " + " ".join(sys.argv[1:])
    sys.argv = [sys.argv[0], *overrides]  # RecBole's Config reads --key=value from argv
    return args, command.strip()


def config_for(dataset: str, **keys):
    from recbole_mmprefer.config import Config

    return Config(model="MMPSASRec", dataset=dataset, config_dict=keys)


def system_config(args, system: str, shots: int, seed: int):
    """The configuration an LLM system is tuned and scored with."""
    if system in ZERO_SHOT:
        return config_for(args.dataset, preference_system=ZERO_SHOT[system])
    return config_for(args.dataset, preference_shots=shots, preference_shot_seed=seed, **LLM_SYSTEMS[system][1])


def settings_fingerprint(args, system: str, shots: int, seed: int) -> str:
    """A digest of every setting a run's AUC depends on: a ledger entry with another digest is measured again."""
    from recbole_mmprefer.preference.knowledge import KnowledgeSettings
    from recbole_mmprefer.preference.settings import PreferenceModelConfig, PreferenceTrainingSettings
    from recbole_mmprefer.utils import json_sha256

    if system in CONVENTIONAL:
        return json_sha256({"model": system, "shots": shots, "seed": seed, "epochs": args.conventional_epochs})
    if system in UNTRAINED:
        return json_sha256({"model": system, "shots": shots, "seed": seed})
    stage = system_config(args, system, shots, seed)
    model = digested_settings(PreferenceModelConfig.from_config(stage).to_config())
    if model["preference_knowledge"]:  # only then do the knowledge_* keys act (and earlier runs had it off)
        # the first two runs with K told each train prompt its own answer (the target's rate counted it)
        model.update(KnowledgeSettings.from_config(stage).to_config(), knowledge_own_answer_left_out=True)
    return json_sha256({"model": model,
                        "training": PreferenceTrainingSettings.from_config(stage).results_keys(),
                        "shots": shots, "seed": seed})


def digested_settings(keys: Dict[str, object]) -> Dict[str, object]:
    """The settings a run's digest holds: inert ones at their fixed value, and later ones left out at the value
    every earlier run had (so that earlier runs keep their digests)."""
    keys = dict(keys)
    for key, (switch, value) in INERT_UNLESS.items():
        if key in keys and not keys.get(switch, True):
            keys[key] = value
    return {key: value for key, value in keys.items() if LATER_SETTINGS.get(key, object()) != value}


def llm_scores(args, config, system: str, shots: int, seed: int) -> Tuple[List[int], List[float]]:
    from recbole_mmprefer.artifacts import run_dir
    from recbole_mmprefer.data.features import build_features
    from recbole_mmprefer.jsonl import read_records
    from recbole_mmprefer.preference.score import score_preferences
    from recbole_mmprefer.preference.train import train_preference_model

    base = Path(run_dir(config)) / "preference_table"
    stage = system_config(args, system, shots, seed)
    if system in ZERO_SHOT:
        out = score_preferences(stage, None, "test", base / "scores" / f"{system}.jsonl",
                                max_samples=args.test_samples)
    else:
        if stage["preference_system"] == "explainrec" and stage["explainrec_multimodal"]:
            for modality in stage["modalities"]:
                build_features(stage, modality)
        name = f"{system}-{shots}shot-seed{seed}"
        model_dir = train_preference_model(stage, base / "models" / name)
        out = score_preferences(stage, model_dir, "test", base / "scores" / f"{name}.jsonl",
                                max_samples=args.test_samples)
    rows = read_records(out)
    return [row["label"] for row in rows], [row["p_yes"] for row in rows]


def conventional_scores(args, model_name: str, shots: int, seed: int) -> Tuple[List[int], List[float]]:
    from recbole.data import create_dataset

    from recbole_mmprefer.config import Config
    from recbole_mmprefer.data.preferences import few_shot, read_preferences
    from recbole_mmprefer.preference.conventional import build_scorer, score_with, train_scorer

    config = Config(model=model_name, dataset=args.dataset, config_dict={"preference_shot_seed": seed})
    samples = read_preferences(config)
    test = [s for s in samples if s["split"] == "test"][:args.test_samples]
    scorer = build_scorer(model_name, config, create_dataset(config))
    train_scorer(scorer, few_shot(samples, shots), args.conventional_epochs, 1e-3, 16, seed)
    return [s["label"] for s in test], score_with(scorer, test)


def untrained_scores(args) -> Tuple[List[int], List[float]]:
    from recbole_mmprefer.data.preferences import read_preferences
    from recbole_mmprefer.preference.cold_baselines import like_share_scores

    test = [s for s in read_preferences(config_for(args.dataset)) if s["split"] == "test"][:args.test_samples]
    return [s["label"] for s in test], like_share_scores(test)


def paired_bootstrap(labels, first, second, resamples: int, seed: int) -> Dict[str, float]:
    """Mean AUC(first) - AUC(second) over bootstrap resamples of the test windows, its 95% interval, and the share
    of resamples where it is not above 0."""
    from recbole_mmprefer.preference.score import auc

    labels, first, second = map(np.asarray, (labels, first, second))
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(resamples):
        picked = rng.integers(0, len(labels), len(labels))
        if len(set(labels[picked])) < 2:
            continue
        differences.append(auc(labels[picked], first[picked]) - auc(labels[picked], second[picked]))
    differences = np.asarray(differences)
    return {"difference": float(differences.mean()), "low": float(np.percentile(differences, 2.5)),
            "high": float(np.percentile(differences, 97.5)), "p_not_better": float((differences <= 0).mean())}


NOTES = "\n## Where this stands"


def kept_notes(out: Path) -> str:
    """The hand-written notes of an earlier report (from its "## Where this stands" heading on), to keep."""
    text = out.read_text(encoding="utf-8") if out.is_file() else ""
    return text[text.index(NOTES):] if NOTES in text else ""


def ledger_path(args) -> Path:
    return Path(args.out or HERE.parent / "results" / f"preference_{args.dataset}.md").with_suffix(".json")


def load_ledger(args) -> dict:
    """Every AUC and bootstrap measured so far (a run's models live in saved/, which a new session may lack:
    the ledger in results/ carries the figures from session to session)."""
    path = ledger_path(args)
    ledger = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if ledger.get("test_samples") != args.test_samples:
        ledger = {"test_samples": args.test_samples, "runs": {}, "bootstrap": {}}
    shared = ledger.pop("labels", None)  # one label list for the whole ledger, as first kept: now per run
    for run in ledger["runs"].values():
        if "scores" in run and "labels" not in run:
            run["labels"] = shared
    return ledger


def save_ledger(args, ledger: dict) -> None:
    write_ledger(ledger_path(args), ledger)


def write_ledger(path: Path, ledger: dict) -> None:
    """``ledger`` as JSON, replaced atomically, one run or bootstrap per line (their score lists stay on it)."""
    def field(name: str, value) -> str:
        if name not in ("runs", "bootstrap") or not value:
            return json.dumps(value, sort_keys=True)
        rows = [f"  {json.dumps(key)}: {json.dumps(entry, sort_keys=True)}" for key, entry in sorted(value.items())]
        return "{\n" + ",\n".join(rows) + "\n }"

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    text = "{\n" + ",\n".join(f" {json.dumps(name)}: {field(name, value)}" for name, value in sorted(ledger.items()))
    temporary.write_text(text + "\n}\n", encoding="utf-8")
    temporary.replace(path)


def main() -> None:
    args, command = parse_arguments()
    from recbole.utils import init_logger

    from recbole_mmprefer.data.preferences import build_preferences

    config = config_for(args.dataset)
    init_logger(config)  # the stages' progress and where their files went
    ledger = load_ledger(args)
    for seed in args.seeds:
        build_preferences(config_for(args.dataset, preference_shot_seed=seed))  # this seed's few-shot order
        for shots in args.shots:
            for system in args.systems:
                measure(args, config, ledger, system, shots, seed)
            if bootstrap_if_due(ledger, f"{shots}|{seed}", f"explainrec|{shots}|{seed}", f"tallrec|{shots}|{seed}",
                                args.bootstrap, seed):
                save_ledger(args, ledger)
    write_report(args, command, ledger)


def measure(args, config, ledger: dict, system: str, shots: int, seed: int) -> None:
    """Tune and score ``system`` unless the ledger has it with the same settings (entries from before
    digests, which carry none, are kept as measured)."""
    key = f"{system}|{shots}|{seed}"
    fingerprint = settings_fingerprint(args, system, shots, seed)
    if key in ledger["runs"] and ledger["runs"][key].get("settings", fingerprint) == fingerprint:
        return
    same = next((other for other, run in ledger["runs"].items() if run.get("settings") == fingerprint), None)
    if same is not None:  # another name for the same settings (a diagnostic that a default has since become)
        ledger["runs"][key] = dict(ledger["runs"][same])
        save_ledger(args, ledger)
        print(f"seed {seed}, {shots} shots, {system}: the settings of {same}, AUC {ledger['runs'][key]['auc']:.4f}",
              flush=True)
        return
    if system in CONVENTIONAL:
        labels, scores = conventional_scores(args, system, shots, seed)
    elif system in UNTRAINED:
        labels, scores = untrained_scores(args)
    else:
        labels, scores = llm_scores(args, config, system, shots, seed)
    record_run(ledger, key, labels, scores, fingerprint)
    save_ledger(args, ledger)
    print(f"seed {seed}, {shots} shots, {system}: AUC {ledger['runs'][key]['auc']:.4f}", flush=True)


def record_run(ledger: dict, key: str, labels: Sequence[int], scores: Sequence[float],
               settings: Optional[str] = None) -> None:
    """A run's AUC with its per-window labels and scores (what a later bootstrap pairs) and settings digest."""
    from recbole_mmprefer.preference.score import auc

    ledger["runs"][key] = {"auc": auc(labels, scores), "labels": [int(label) for label in labels],
                           "scores": [round(float(score), 6) for score in scores],
                           **({"settings": settings} if settings is not None else {})}


def bootstrap_if_due(ledger: dict, pair: str, ours: str, theirs: str, resamples: int, seed: int) -> bool:
    """The paired bootstrap of run ``ours`` against run ``theirs`` from their scores in the ledger, unless
    ``pair`` already holds it for these two runs (a digest of each); False when nothing was (re)computed,
    including where a run predates kept scores and so cannot be paired."""
    from recbole_mmprefer.utils import json_sha256

    first, second = ledger["runs"].get(ours, {}), ledger["runs"].get(theirs, {})
    if "scores" not in first or "scores" not in second:
        return False
    if first["labels"] != second["labels"]:
        raise RuntimeError(f"{ours} and {theirs} were scored on different test windows: they cannot be paired")
    runs = [json_sha256(first), json_sha256(second)]
    if ledger["bootstrap"].get(pair, {}).get("runs") == runs:
        return False
    ledger["bootstrap"][pair] = {**paired_bootstrap(first["labels"], first["scores"], second["scores"], resamples,
                                                    seed), "runs": runs}
    return True


def label_of(system: str) -> str:
    return {"zero_shot": "zero-shot (frozen LLM)", "zero_shot_explainrec": "zero-shot, ExplainRec's prompt",
            **UNTRAINED}.get(system, LLM_SYSTEMS.get(system, (system,))[0])


def main_rows(results: Dict[str, Dict[int, List[float]]]) -> List[str]:
    """The main table's systems in the paper's order (zero-shot, TALLRec, ExplainRec, its ablations, RecBole's
    models, the untrained bar), then any other non-diagnostic system measured."""
    order = [*ZERO_SHOT, *MAIN_SYSTEMS, *CONVENTIONAL, *UNTRAINED]
    return [s for s in order if s in results] + [s for s in results if s not in order and s not in DIAGNOSTIC_SYSTEMS]


def auc_table(results: Dict[str, Dict[int, List[float]]], systems: Sequence[str],
              shot_counts: Sequence[int]) -> List[str]:
    """Markdown rows: per system and shot count, the mean AUC over seeds, its population std and n."""
    lines = ["| system | " + " | ".join(f"{shots} shots" for shots in shot_counts) + " |",
             "|---|" + "---|" * len(shot_counts)]
    for system in systems:
        by_shots = results[system]
        cells = [f"{np.mean(by_shots[s]):.4f} ± {np.std(by_shots[s]):.4f} (n={len(by_shots[s])})"
                 if s in by_shots else "" for s in shot_counts]
        lines.append(f"| {label_of(system)} | " + " | ".join(cells) + " |")
    return lines


def write_report(args, command: str, ledger: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out or HERE.parent / "results" / f"preference_{args.dataset}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    results: Dict[str, Dict[int, List[float]]] = {}
    seeds = sorted({int(key.split("|")[2]) for key in ledger["runs"]})
    for key, run in sorted(ledger["runs"].items()):
        system, shots, _ = key.split("|")
        results.setdefault(system, {}).setdefault(int(shots), []).append(run["auc"])
    shot_counts = sorted({shots for by_shots in results.values() for shots in by_shots})
    lines = [f"# Preference prediction on {args.dataset}: AUC against shots", "",
             f"AUC on the first {args.test_samples} test windows (TALLRec's protocol), mean and population std over "
             f"the seeds measured ({seeds}; each seed draws its own few-shot sets; n = seeds per cell).", "",
             *auc_table(results, main_rows(results), shot_counts)]
    diagnostics = [system for system in DIAGNOSTIC_SYSTEMS if system in results]
    if diagnostics:
        lines += ["", "Diagnostic runs (what each component and setting is worth; the settings ExplainRec was first "
                  "measured with unless the row names others):", "",
                  *auc_table(results, diagnostics, shot_counts)]
    if ledger["bootstrap"]:
        lines += ["", "Paired bootstrap, ExplainRec minus TALLRec (same test windows):", "",
                  "| shots | seed | AUC difference | 95% interval | share of resamples <= 0 |", "|---|---|---|---|---|"]
        for pair, test in sorted(ledger["bootstrap"].items(), key=lambda item: tuple(map(int, item[0].split("|")))):
            shots, seed = pair.split("|")
            lines.append(f"| {shots} | {seed} | {test['difference']:+.4f} | [{test['low']:+.4f}, "
                         f"{test['high']:+.4f}] | {test['p_not_better']:.3f} |")
    figure, axis = plt.subplots(figsize=(6, 4))
    curves = {system: by_shots for system, by_shots in results.items()
              if len(by_shots) > 1 and system not in DIAGNOSTIC_SYSTEMS}
    for system, by_shots in curves.items():
        shots = sorted(by_shots)
        axis.errorbar(shots, [np.mean(by_shots[s]) for s in shots], yerr=[np.std(by_shots[s]) for s in shots],
                      marker="o", capsize=3, label=label_of(system))
    axis.set_xscale("log", base=2)
    axis.set_xlabel("training samples (shots)")
    axis.set_ylabel("test AUC")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out.with_suffix(".png"), dpi=100)
    lines += ["", f"Figure (the systems measured at more than one shot count): {out.with_suffix('.png').name}; "
              f"every figure: {ledger_path(args).name}", "",
              f"Command (last run): `{command}`", ""]
    notes = kept_notes(out)
    out.write_text("\n".join(lines) + notes, encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
