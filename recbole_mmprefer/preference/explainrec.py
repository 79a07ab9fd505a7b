"""ExplainRec (arXiv 2511.14770; design section 4): preference prediction that says why, on TALLRec's base.

**Prompt.** TALLRec's, with each history item followed by its reason
(:mod:`.reasons`: its genres, or its review summary) under ``explainrec_attribution``,
the history summary (``The user liked 7 of these 10 movies.``) under
``explainrec_history_summary``, the target's genres, and ``explainrec_soft_tokens`` soft tokens of the target's
fused modality features (:mod:`.fusion`) after its title under
``explainrec_multimodal`` (``explainrec_soft_prompt_start``: a random projection, or a
neutral token the projection is added to, which starts at zero).

**Answer.** ``Yes.`` / ``No.``, then (attribution, whose instruction,
``explainrec_instruction``, asks for it) `` Reason: <reference reason>`` and
EOS. P(Yes) is read at the first answer token exactly as for TALLRec.

**Losses** (each a mean over the batch):

* ``L_pred``: cross-entropy of the two-way softmax over the (Yes, No) logits at
  the first answer token (the quantity that is scored);
* ``L_reason`` (attribution): NLL of the reason tokens after the true answer;
* ``L_consistency`` (attribution): the answer must agree with what the reason
  supports. With s_a = log P(reason | prompt, answer a), the reason's own
  verdict is q = softmax(s_Yes, s_No) (teacher-forced under both answers), and
  L_consistency = KL(q || p), p the predicted (Yes, No) distribution. It is
  low when the answer the model gives is the one under which its reason is the
  more likely, and its gradient reaches both the answer and the reason;
* ``L_rating`` (multi-task): the target's rating (where known) through
  ``explainrec_rating_head`` (:mod:`.rating_heads`: linear, margin or ordinal).

**Task weights.** ``explainrec_task_weighting: uncertainty`` learns one
log-variance s_t per task (Kendall et al., 2018): L = sum_t exp(-s_t) L_t +
s_t; ``fixed`` uses ``explainrec_pred_weight`` (a), ``explainrec_reason_weight``
(b), ``explainrec_consistency_weight`` (g) and ``explainrec_rating_weight``.
The ablations are switches: ``explainrec_attribution`` (``explainrec_history_summary``
within it), ``explainrec_multimodal``, ``explainrec_multitask`` (False: no rating
task, fixed weights).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from recbole_mmprefer.errors import InputError
from recbole_mmprefer.explainer.prompts import SOFT_MARKER
from recbole_mmprefer.explainer.tokens import IGNORE_INDEX, encode_prompt
from recbole_mmprefer.preference.model import PreferenceModel, position_ids
from recbole_mmprefer.preference.prompts import answer_text, knowledge_line, quoted, sample_title
from recbole_mmprefer.preference.rating_heads import rating_head, rating_loss
from recbole_mmprefer.preference.reasons import history_summary, history_with_reasons, reference_reason
from recbole_mmprefer.preference.settings import ExplainRecSettings, PreferencePromptSettings

# -- examples --------------------------------------------------------------------------------------------


@dataclass
class ExplainRecExample:
    """A sample under one answer: ids, soft positions, the first answer token's position, reason labels."""

    input_ids: List[int]
    soft_positions: List[int]
    answer_position: int  # the last prompt token: its logits are the first answer token's
    labels: List[int]  # the reason's tokens (and EOS); -100 elsewhere
    label: int
    answer: int  # the answer this sequence holds (the label, or its flip)
    rating: Optional[float]
    item_id: str

    def __len__(self) -> int:
        return len(self.input_ids)


def explainrec_input(sample: dict, prompt: PreferencePromptSettings, settings: ExplainRecSettings,
                     history: Sequence[dict]) -> str:
    liked = [entry for entry in history if entry["liked"]]
    disliked = [entry for entry in history if not entry["liked"]]
    if settings.attribution:
        liked_text, disliked_text = history_with_reasons(liked), history_with_reasons(disliked)
        groups = ", ".join(sample.get("groups") or [])
        target = f'"{sample_title(sample)}"' + (f" ({groups})" if groups else "")
    else:
        liked_text = quoted([sample_title(entry) for entry in liked])
        disliked_text = quoted([sample_title(entry) for entry in disliked])
        target = f'"{sample_title(sample)}"'
    if settings.multimodal:
        target += f" {SOFT_MARKER}"
    summary = history_summary(history, prompt.item_kind) + "\n" if settings.attribution and settings.history_summary \
        else ""
    return (f"User Preference: {liked_text}\nUser Unpreference: {disliked_text}\n{summary}{knowledge_line(sample)}"
            f"Whether the user will like the target {prompt.item_kind} {target}?")


def build_explainrec_examples(sample: dict, tokenizer, prompt: PreferencePromptSettings,
                              settings: ExplainRecSettings, with_answers: bool) -> List[ExplainRecExample]:
    """The sample under its true answer and (attribution) its flipped one for training; the prompt alone for
    scoring. Oldest history items are dropped first to stay within ``preference_max_length``."""
    soft = settings.soft_tokens if settings.multimodal else 0
    summary_kind = prompt.item_kind if settings.history_summary else None
    reason = f" Reason: {reference_reason(sample, summary_kind)}" if settings.attribution and with_answers else ""
    eos = [int(tokenizer.eos_token_id)] if tokenizer.eos_token_id is not None else []
    reason_ids = (list(tokenizer(reason, add_special_tokens=False)["input_ids"]) + eos) if reason else []
    answers = [int(sample["label"])] + ([1 - int(sample["label"])] if reason else []) if with_answers else [None]
    longest = max(len(tokenizer(answer_text(a, tokenizer), add_special_tokens=False)["input_ids"])
                  for a in (0, 1)) if with_answers else 0
    history = list(sample["history"])
    for dropped in range(len(history) + 1):
        instruction = settings.instruction if settings.attribution else prompt.instruction
        text = instruction.format(kind=prompt.item_kind) + "\n" + explainrec_input(
            sample, prompt, settings, history[dropped:])
        ids, positions = encode_prompt(text, tokenizer, soft)
        if len(ids) + longest + len(reason_ids) <= prompt.max_length:
            break
    else:
        raise InputError(f"preference sample {sample.get('index')} needs {len(ids) + longest + len(reason_ids)} "
                         f"tokens even without its history; preference_max_length is {prompt.max_length}")
    examples = []
    for answer in answers:
        answer_ids = [] if answer is None else list(tokenizer(answer_text(answer, tokenizer),
                                                              add_special_tokens=False)["input_ids"])
        after = (reason_ids or eos) if answer is not None else []
        labels = [IGNORE_INDEX] * (len(ids) + len(answer_ids)) + (reason_ids or [IGNORE_INDEX] * len(after))
        label = int(sample["label"])
        examples.append(ExplainRecExample(ids + answer_ids + after, positions, len(ids) - 1, labels, label,
                                          label if answer is None else answer, sample.get("rating"),
                                          str(sample.get("item_id"))))
    return examples


def checkpointing_on(llm) -> bool:
    """Whether the LLM recomputes activations in the backward pass (and so keeps no key/value cache)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # the first: transformers >= 5
        if hasattr(type(llm), name):
            return bool(getattr(llm, name))
    return False


def cache_argument(model, cache) -> Dict[str, object]:
    """The key/value cache as the model's forward takes it: ``cache`` (transformers >= 5.25) or
    ``past_key_values``."""
    return {"cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values": cache}


def reason_tokens(labels: Tensor) -> Tensor:
    """Per row, how many of its tokens are supervised (at least 1, to divide by)."""
    return (labels[:, 1:] != IGNORE_INDEX).sum(dim=1).clamp(min=1)


def collate_explainrec(examples: Sequence[ExplainRecExample], pad_id: int) -> Dict[str, Tensor]:
    """Left-padded tensors; ``answer_position`` and ``soft_positions`` shifted by each row's padding."""
    width = max(len(example) for example in examples)
    rows = {"input_ids": [], "attention_mask": [], "labels": [], "soft_positions": [], "answer_position": []}
    for example in examples:
        pad = width - len(example)
        rows["input_ids"].append([pad_id] * pad + example.input_ids)
        rows["attention_mask"].append([0] * pad + [1] * len(example))
        rows["labels"].append([IGNORE_INDEX] * pad + example.labels)
        rows["soft_positions"].append([position + pad for position in example.soft_positions])
        rows["answer_position"].append(example.answer_position + pad)
    batch = {key: torch.tensor(value, dtype=torch.long) for key, value in rows.items()}
    batch["label"] = torch.tensor([example.label for example in examples])
    batch["answer"] = torch.tensor([example.answer for example in examples])
    batch["rating"] = torch.tensor([float("nan") if example.rating is None else example.rating
                                    for example in examples])
    return batch


def collate_shared_prompt(examples: Sequence[ExplainRecExample], pad_id: int) -> Dict[str, Tensor]:
    """Training batch of (true answer, flipped answer) pairs whose two rows share their prompt: the prompts once,
    left-padded (``input_ids``, ``attention_mask``, ``soft_positions``; the last column is every prompt's last
    token), and each row's answer + reason after it, right-padded (``continuation_*``). ``label``, ``rating``
    per sample; the continuations in pair order."""
    pairs = examples[0::2]
    prompts = [example.input_ids[:example.answer_position + 1] for example in pairs]
    continuations = [(example.input_ids[example.answer_position + 1:], example.labels[example.answer_position + 1:])
                     for example in examples]
    width = max(len(prompt) for prompt in prompts)
    tail = max(len(ids) for ids, _ in continuations)
    batch = {
        "input_ids": torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts]),
        "attention_mask": torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts]),
        "soft_positions": torch.tensor([[position + width - len(prompt) for position in example.soft_positions]
                                        for example, prompt in zip(pairs, prompts)], dtype=torch.long),
        "continuation_ids": torch.tensor([ids + [pad_id] * (tail - len(ids)) for ids, _ in continuations]),
        "continuation_mask": torch.tensor([[1] * len(ids) + [0] * (tail - len(ids)) for ids, _ in continuations]),
        "continuation_labels": torch.tensor([labels + [IGNORE_INDEX] * (tail - len(labels))
                                             for _, labels in continuations]),
        "label": torch.tensor([example.label for example in pairs]),
        "rating": torch.tensor([float("nan") if example.rating is None else example.rating for example in pairs]),
    }
    return batch


# -- the model -------------------------------------------------------------------------------------------


class ExplainRecModel(PreferenceModel):
    """TALLRec's model plus the fusion soft prompt, a rating head and learned task weights."""

    def __init__(self, llm, tokenizer, settings, item_features=None):
        super().__init__(llm, tokenizer, settings)
        explainrec: ExplainRecSettings = settings.explainrec
        if explainrec is None:
            raise InputError("ExplainRecModel needs preference_system: explainrec")
        self.explainrec = explainrec
        hidden = self.llm.get_input_embeddings().embedding_dim
        self.fusion = None
        if explainrec.multimodal:
            from recbole_mmprefer.preference.fusion import ModalityFusion

            if item_features is None:
                raise InputError("explainrec_multimodal needs the item features (the feature store)")
            self.fusion = ModalityFusion(item_features.dims, explainrec.fusion_hidden, explainrec.soft_tokens, hidden,
                                         start=explainrec.soft_prompt_start)
            self.fusion.start_at(self.llm.get_input_embeddings().weight.float().mean(dim=0))
        self.item_features = item_features  # a ModalityFeatures (not a module: no weights)
        self.rating_head = rating_head(explainrec, hidden) if explainrec.multitask else None
        self.log_variances = nn.Parameter(torch.zeros(len(explainrec.tasks))) if explainrec.adaptive else None
        self.to(self.device)
        self.last_modality_weights: Optional[Tensor] = None

    def embeddings(self, batch: Dict[str, Tensor], features=None) -> Tensor:
        embeds = self.causal_lm().get_input_embeddings()(batch["input_ids"].to(self.device))
        if self.fusion is None:
            return embeds
        if features is None:
            raise InputError("explainrec_multimodal needs each target item's features")
        tokens, weights = self.fusion(*features)
        self.last_modality_weights = weights.detach()
        rows = torch.arange(len(embeds), device=self.device).unsqueeze(1)
        embeds = embeds.clone()
        embeds[rows, batch["soft_positions"].to(self.device)] = tokens.to(embeds.dtype)
        return embeds

    def hidden_of(self, batch: Dict[str, Tensor], features=None) -> Tensor:
        mask = batch["attention_mask"].to(self.device)
        return self.causal_lm().base_model(inputs_embeds=self.embeddings(batch, features), attention_mask=mask,
                                           position_ids=position_ids(mask)).last_hidden_state

    def answer_logits_at(self, hidden: Tensor, positions: Tensor) -> Tensor:
        rows = hidden[torch.arange(len(hidden), device=hidden.device), positions.to(hidden.device)]
        head = self.causal_lm().get_output_embeddings()
        return (rows @ head.weight[[self.yes_id, self.no_id]].T).float(), rows

    def sample_rows(self) -> slice:
        """The rows of a whole-sequence batch that hold each sample's true answer (every other one under
        attribution, whose rows come in (true, flipped) pairs)."""
        return slice(0, None, 2 if self.explainrec.attribution else 1)

    def full_sequence_pass(self, batch: Dict[str, Tensor], features=None) -> Tuple[Tensor, ...]:
        """Per sample the (Yes, No) logits and the answer position's state, and per row (true, flipped answer
        under attribution) its reason's summed log-probability and token count, from whole sequences."""
        hidden = self.hidden_of(batch, features)
        logits, answer_rows = self.answer_logits_at(hidden, batch["answer_position"])
        true = self.sample_rows()
        if not self.explainrec.attribution:
            return logits[true], answer_rows[true], None, None
        labels = batch["labels"].to(self.device)
        return logits[true], answer_rows[true], self.reason_log_probs(hidden, labels), reason_tokens(labels)

    def shared_prompt_pass(self, batch: Dict[str, Tensor], features=None) -> Tuple[Tensor, ...]:
        """The same quantities as :meth:`full_sequence_pass`, the prompt computed once per sample and its key/value
        cache extended by both answers (:func:`collate_shared_prompt`): on ml-100k 37% fewer tokens and 1.74x
        faster than whole sequences with checkpointing (results/bench_preference.md)."""
        if checkpointing_on(self.causal_lm()):
            raise InputError("a shared-prompt ExplainRec batch needs the LLM's key/value cache, which gradient "
                             "checkpointing turns off: collate the batch after enabling checkpointing")
        mask = batch["attention_mask"].to(self.device)
        base = self.causal_lm().base_model
        prompt = base(inputs_embeds=self.embeddings(batch, features), attention_mask=mask,
                      position_ids=position_ids(mask), use_cache=True)
        last = torch.full((len(mask),), mask.shape[1] - 1, dtype=torch.long)
        logits, answer_rows = self.answer_logits_at(prompt.last_hidden_state, last)
        cache = getattr(prompt, "cache", None)
        cache = prompt.past_key_values if cache is None else cache
        cache.batch_repeat_interleave(2)
        tail_mask = batch["continuation_mask"].to(self.device)
        starts = mask.sum(dim=1).repeat_interleave(2).unsqueeze(1)
        tail = base(input_ids=batch["continuation_ids"].to(self.device), **cache_argument(base, cache), use_cache=False,
                    attention_mask=torch.cat([mask.repeat_interleave(2, dim=0), tail_mask], dim=1),
                    position_ids=starts + torch.arange(tail_mask.shape[1], device=self.device)).last_hidden_state
        labels = batch["continuation_labels"].to(self.device)
        return logits, answer_rows, self.reason_log_probs(tail, labels), reason_tokens(labels)

    def task_losses(self, batch: Dict[str, Tensor], features=None) -> Dict[str, Tensor]:
        """Each task's loss over a batch whose rows come in (true answer, flipped answer) pairs under
        attribution (whole sequences, or the shared-prompt layout), one row per sample otherwise."""
        shared = "continuation_ids" in batch
        logits, answer_rows, reason, tokens = (self.shared_prompt_pass if shared else self.full_sequence_pass)(
            batch, features)
        true = slice(None) if shared else self.sample_rows()
        labels = batch["label"].to(self.device)[true]
        # the (Yes, No) logits: column 0 is Yes, so the class of label 1 is 0
        losses = {"pred": nn.functional.cross_entropy(logits, 1 - labels)}
        if self.explainrec.attribution:
            losses["reason"] = -(reason[0::2] / tokens[0::2]).mean()
            under_true, under_flip = reason[0::2], reason[1::2]
            yes_first = labels == 1
            verdict = torch.stack([torch.where(yes_first, under_true, under_flip),
                                   torch.where(yes_first, under_flip, under_true)], dim=1)
            q = torch.log_softmax(verdict, dim=1)
            p = torch.log_softmax(logits, dim=1)
            losses["consistency"] = nn.functional.kl_div(p, q, log_target=True, reduction="batchmean")
        if self.rating_head is not None:
            losses["rating"] = self.rating_loss(logits, answer_rows, batch["rating"].to(self.device)[true])
        return losses

    def rating_loss(self, logits: Tensor, answer_rows: Tensor, ratings: Tensor) -> Tensor:
        """L_rating over the samples whose rating is known (zero, with a graph, when none is)."""
        return rating_loss(self.rating_head, self.explainrec, logits, answer_rows, ratings)

    def reason_log_probs(self, hidden: Tensor, labels: Tensor) -> Tensor:
        """Per row, the summed log-probability of its labelled (reason) tokens."""
        targets = labels[:, 1:]
        supervised = targets != IGNORE_INDEX
        logits = self.causal_lm().get_output_embeddings()(hidden[:, :-1][supervised]).float()
        picked = torch.log_softmax(logits, dim=-1).gather(1, targets[supervised].unsqueeze(1)).squeeze(1)
        rows = supervised.nonzero()[:, 0]
        return torch.zeros(len(labels), device=hidden.device).index_add(0, rows, picked)

    def combine(self, losses: Dict[str, Tensor]) -> Tensor:
        """The weighted total: learned uncertainty weights, or the fixed a, b, g and rating weights."""
        if self.log_variances is not None:
            return sum(torch.exp(-self.log_variances[n]) * losses[task] + self.log_variances[n]
                       for n, task in enumerate(self.explainrec.tasks))
        return sum(getattr(self.explainrec, f"{task}_weight") * losses[task] for task in self.explainrec.tasks)

    # -- what training and scoring call ----------------------------------------------------------------

    def examples(self, sample: dict, with_answers: bool) -> List[ExplainRecExample]:
        return build_explainrec_examples(sample, self.tokenizer, self.settings.prompt, self.explainrec, with_answers)

    def shares_prompts(self, examples: Sequence[ExplainRecExample]) -> bool:
        """Training pairs share their prompt's cache, unless gradient checkpointing is on (the LLM then keeps no
        cache)."""
        return (self.training and self.explainrec.attribution and len(examples) % 2 == 0
                and all(example.answer != flipped.answer for example, flipped in zip(examples[0::2], examples[1::2]))
                and not checkpointing_on(self.causal_lm()))

    def collate(self, examples: Sequence[ExplainRecExample]) -> Dict[str, object]:
        pad_id = int(self.tokenizer.pad_token_id)
        shared = self.shares_prompts(examples)
        batch = (collate_shared_prompt if shared else collate_explainrec)(examples, pad_id)
        if self.fusion is not None:
            items = examples[0::2] if shared else examples
            batch["features"] = self.item_features.batch([example.item_id for example in items])
        return batch

    def training_loss(self, batch: Dict[str, object]) -> Tuple[Tensor, Dict[str, float]]:
        losses = self.task_losses(batch, batch.get("features"))
        parts = {task: float(value.detach()) for task, value in losses.items()}
        if self.log_variances is not None:
            parts.update({f"log_variance_{task}": float(self.log_variances[n].detach())
                          for n, task in enumerate(self.explainrec.tasks)})
        if self.last_modality_weights is not None:
            mean = self.last_modality_weights.mean(dim=0)
            parts.update({f"modality_weight_{m}": float(mean[n]) for n, m in enumerate(self.fusion.modalities)})
        return self.combine(losses), parts

    @torch.no_grad()
    def generate_reasons(self, samples: Sequence[dict], answers: Sequence[int], max_new_tokens: int,
                         batch_size: int = 8) -> List[str]:
        """The reason the model gives after the answer it chose (``answers``: 1 Yes, 0 No), greedily."""
        if not self.explainrec.attribution:
            raise InputError("reasons are generated under explainrec_attribution only")
        prefix = list(self.tokenizer(" Reason:", add_special_tokens=False)["input_ids"])
        examples = []
        for sample, answer in zip(samples, answers):
            example = self.examples(sample, with_answers=False)[0]
            tail = list(self.tokenizer(answer_text(answer, self.tokenizer), add_special_tokens=False)["input_ids"])
            example.input_ids = example.input_ids + tail + prefix
            example.labels = example.labels + [IGNORE_INDEX] * (len(tail) + len(prefix))
            examples.append(example)
        reasons: List[str] = []
        causal_lm = self.causal_lm()
        for start in range(0, len(examples), batch_size):
            batch = self.collate(examples[start:start + batch_size])
            embeds = self.embeddings(batch, batch.get("features"))
            output = causal_lm.generate(inputs_embeds=embeds, attention_mask=batch["attention_mask"].to(self.device),
                                        max_new_tokens=int(max_new_tokens), do_sample=False,
                                        pad_token_id=self.tokenizer.pad_token_id,
                                        eos_token_id=self.tokenizer.eos_token_id)
            reasons += [text.strip() for text in self.tokenizer.batch_decode(output, skip_special_tokens=True)]
        return reasons

    @torch.no_grad()
    def score(self, batch: Dict[str, object]) -> Tensor:
        logits, _ = self.answer_logits_at(self.hidden_of(batch, batch.get("features")), batch["answer_position"])
        return torch.softmax(logits, dim=-1)[:, 0]
