"""The model-based metrics of `mmprefer evaluate` (paper section 4.2): likelihood, BLEURT, the LLM judge.

Each becomes a scorer ``(candidates, references) -> {name: MetricResult}``
whose model is loaded once for all systems; BLEURT without a configured
checkpoint is reported absent instead of scored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

from recbole_mmprefer.evaluation.judge import judge_model_name, judge_scores
from recbole_mmprefer.evaluation.likelihood import LikelihoodScorer, bleurt_scores, likelihood_scores
from recbole_mmprefer.evaluation.metrics import MetricResult
from recbole_mmprefer.resources import stage_setting

Scorer = Callable[[Sequence[str], Sequence[str]], Dict[str, MetricResult]]


def build_model_scorers(config, wanted: Sequence[str], cache_dir: Path) -> Tuple[List[Scorer], List[str], dict]:
    """Scorers for the wanted model metrics, the metrics reported absent, and the models used."""
    scorers: List[Scorer] = []
    absent: List[str] = []
    used: Dict[str, object] = {}
    if "likelihood" in wanted:
        scorer = LikelihoodScorer.from_config(config, None)
        scorers.append(lambda candidates, references: likelihood_scores(candidates, references, config,
                                                                         scorer=scorer))
        seq2seq, llm_path = stage_setting(config, "eval_bartscore_model"), stage_setting(config, "llm_path")
        used["likelihood model"] = (f"seq2seq {seq2seq} (BARTScore)" if seq2seq
                                    else f"causal LM {llm_path or 'bundled SmolLM2-135M-Instruct'}"
                                    " (LM likelihood, not BARTScore)")
    if "bleurt" in wanted:
        if stage_setting(config, "eval_bleurt_model"):
            scorers.append(lambda candidates, references: {"bleurt": bleurt_scores(candidates, references, config)})
            used["BLEURT checkpoint"] = stage_setting(config, "eval_bleurt_model")
        else:
            absent.append("BLEURT")
    if "judge" in wanted:
        scorers.append(lambda candidates, references: {
            "llm_judge": judge_scores(candidates, references, config, cache_path=cache_dir / "judge_cache.jsonl")})
        used["LLM judge"] = judge_model_name(config)
    return scorers, absent, used
