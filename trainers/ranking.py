"""What the ranking trainers (`trainers.rrhf`, `trainers.pro`) share: candidate groups read from a
dataset version, their tokenisation, a collator, and a Trainer whose loss is one of
`trainers.losses.RANK_LOSSES` over the candidates of each prompt.

Where the groups come from, first match wins:
- a candidates table (the `self_reward` side table, `<output>-candidates@vN`): rows with `prompt_id`
  (or `prompt`), `prompt`, `completion` and `score`; a row with a null score or a `filtered` reason
  is left out, as the pairing step leaves it out;
- a pair version whose manifest names a candidates side table (`lineage.side_tables.candidates`):
  that table, so `--dataset self-reward@v1` trains on every candidate, not only best vs worst;
- plain pairs: a group of two, chosen over rejected (scores from `chosen_score`/`rejected_score`
  when both are there, else 1 and 0); ties (label_prob 0.5 or null) are dropped, as hard losses do.
A group needs two candidates with different scores to rank; fewer, and it is dropped and counted.
"""

from __future__ import annotations

import sys
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from transformers import Trainer

from prefdata.errors import PrefdataError
from trainers import common


class RankTrainConfig(common.BaseTrainConfig):
    """Fields both ranking trainers share (each adds its loss's own)."""

    batch_size: int = Field(2, ge=1, description="Prompts per device per step, >= 1; each brings all its "
                                                 "candidates (up to max_candidates) into the batch.")
    max_candidates: int = Field(8, ge=2, le=64, description="Candidates kept per prompt, in [2, 64]; a prompt with "
                                "more keeps the best, the worst and evenly spaced ranks between.")
    eval_fraction: float = Field(0.1, ge=0, le=0.5, description="Held-out share of prompts, in [0, 0.5]; needs >= 10 "
                                 "prompts. Loss and ranking accuracy on them go into the card.")


# ----------------------------------------------------------------------------- groups


def _candidates_ref(prov: dict) -> str | None:
    """The candidates side table a store version's manifest names, if any."""
    if "@" not in prov["dataset"]:
        return None
    from prefdata import store

    try:
        lineage = store.resolve(prov["dataset"]).manifest.get("lineage", {})
    except PrefdataError:
        return None
    return (lineage.get("side_tables") or {}).get("candidates")


def _spread(order: np.ndarray, k: int) -> np.ndarray:
    """k indices from a best-first order: best, worst, and evenly spaced ranks between."""
    if len(order) <= k:
        return order
    return order[np.unique(np.linspace(0, len(order) - 1, k).round().astype(int))]


def groups_from_candidates(ds, max_candidates: int) -> tuple[list[dict], dict]:
    """[{prompt, completions (best first), rewards}], and the counts for the card."""
    import polars as pl

    common.require_columns(ds, ["prompt", "completion", "score"], "ranking over candidates")
    key = "prompt_id" if "prompt_id" in ds.column_names else None
    cols = ["score"] + (["filtered"] if "filtered" in ds.column_names else []) + ([key] if key else [])
    df = pl.from_arrow(ds.select_columns(cols).flatten_indices().data.table).with_row_index("row")
    if key is None:  # no id: the prompt's text identifies it
        texts = ["\x1f".join(m["content"] for m in p) if isinstance(p, list) else str(p) for p in ds["prompt"]]
        df = df.with_columns(pl.Series("prompt_key", texts))
        key = "prompt_key"
    keep = pl.col("score").is_not_null() & pl.col("score").is_not_nan()
    if "filtered" in df.columns:
        keep = keep & pl.col("filtered").is_null()
    counts = {"candidates_read": df.height, "candidates_unscored_or_filtered": int((~df.select(keep)[:, 0]).sum())}
    by = (df.filter(keep).sort([key, "score", "row"], descending=[False, True, False])
          .group_by(key, maintain_order=True).agg(pl.col("row"), pl.col("score"), pl.col("score").n_unique().alias("u")))
    ranked = by.filter(pl.col("u") >= 2)
    counts["prompts_without_two_scores"] = by.height - ranked.height
    prompts, comps = ds["prompt"], ds["completion"]
    groups = []
    for rows, scores in zip(ranked["row"].to_list(), ranked["score"].to_list()):  # one entry per prompt
        pick = _spread(np.arange(len(rows)), max_candidates)
        groups.append({"prompt": prompts[rows[0]], "completions": [comps[rows[i]] for i in pick],
                       "rewards": [float(scores[i]) for i in pick]})
    return groups, counts


def groups_from_pairs(ds) -> tuple[list[dict], dict]:
    common.require_columns(ds, ["prompt", "chosen", "rejected"], "ranking over pairs")
    ds, ties = common.resolve_ties(ds, soft=False, what="a ranking loss")
    scored = all(c in ds.column_names for c in ("chosen_score", "rejected_score"))
    groups = []
    for i, row in enumerate(ds):
        sc, sr = (row["chosen_score"], row["rejected_score"]) if scored else (None, None)
        good = sc is not None and sr is not None and sc > sr
        groups.append({"prompt": row["prompt"], "completions": [row["chosen"], row["rejected"]],
                       "rewards": [float(sc), float(sr)] if good else [1.0, 0.0]})
    return groups, {"pairs_read": len(ds), **(ties or {})}


def load_groups(cfg: RankTrainConfig):
    """(HF dataset of groups, provenance, card counts); fails before any step when nothing ranks."""
    import datasets

    ds, prov = common.load_dataset_ref(cfg.dataset, None)
    side = None if "score" in ds.column_names else _candidates_ref(prov)
    if side:
        print(f"reading candidates from {side} (the side table of {prov['dataset']})", file=sys.stderr)
        ds, side_prov = common.load_dataset_ref(side, None)
        prov = {**prov, "candidates": side_prov["dataset"], "candidates_sha256": side_prov["dataset_sha256"]}
    if "completion" in ds.column_names and "score" in ds.column_names:
        groups, counts = groups_from_candidates(ds, cfg.max_candidates)
        counts["source"] = "candidates"
    elif "chosen" in ds.column_names:
        groups, counts = groups_from_pairs(ds)
        counts["source"] = "pairs"
    else:
        raise PrefdataError(f"{cfg.dataset}: a ranking trainer needs a candidates table (prompt, completion, score) "
                            f"or pairs (prompt, chosen, rejected); it has: {', '.join(ds.column_names)}")
    if not groups:
        raise PrefdataError(f"{cfg.dataset}: no prompt has two candidates with different scores, so there is "
                            "nothing to rank")
    counts["prompts"] = len(groups)
    counts["candidates"] = sum(len(g["rewards"]) for g in groups)
    return datasets.Dataset.from_list(groups), prov, counts


# ----------------------------------------------------------------------------- tokens


def encode(prompt, completion, tok, max_length: int) -> tuple[list[int], int]:
    """(token ids of prompt + completion, prompt length). The completion is what follows the prompt's
    generation prefix in the chat template; a long text loses the completion's end, then the prompt's start."""
    if isinstance(prompt, list):
        head = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(prompt + completion, tokenize=False)
        tail = full[len(head):] if full.startswith(head) else completion[-1]["content"]
    else:
        head, tail = str(prompt), str(completion)
    p = tok(head, add_special_tokens=False)["input_ids"]
    c = tok(tail, add_special_tokens=False)["input_ids"]
    keep_c = max(1, max_length - len(p))
    c = c[:keep_c]
    p = p[len(p) - (max_length - len(c)):] if len(p) + len(c) > max_length else p
    return p + c, len(p)


def tokenize_groups(ds, tok, max_length: int):
    def enc(row):
        out = [encode(row["prompt"], c, tok, max_length) for c in row["completions"]]
        return {"input_ids": [ids for ids, _ in out], "prompt_len": [n for _, n in out]}

    return ds.map(enc, remove_columns=["prompt", "completions"])


class GroupCollator:
    """Groups -> one flat batch of every candidate, plus where each sits in the (B, K) grid."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, examples: list[dict]) -> dict:
        k = max(len(e["rewards"]) for e in examples)
        seqs, plens, slots = [], [], []
        rewards = torch.zeros(len(examples), k)
        valid = torch.zeros(len(examples), k, dtype=torch.bool)
        for b, e in enumerate(examples):
            n = len(e["rewards"])
            rewards[b, :n] = torch.tensor(e["rewards"])
            valid[b, :n] = True
            seqs += e["input_ids"]
            plens += e["prompt_len"]
            slots += [b * k + i for i in range(n)]
        t = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), t), self.pad, dtype=torch.long)
        attn = torch.zeros(len(seqs), t, dtype=torch.long)
        comp = torch.zeros(len(seqs), t, dtype=torch.long)
        for i, (s, p) in enumerate(zip(seqs, plens)):
            ids[i, :len(s)] = torch.tensor(s)
            attn[i, :len(s)] = 1
            comp[i, p:len(s)] = 1
        return {"input_ids": ids, "attention_mask": attn, "completion_mask": comp, "slot": torch.tensor(slots),
                "rewards": rewards, "valid": valid}


# ----------------------------------------------------------------------------- trainer


def rank_accuracy(logps, lengths, rewards, valid) -> tuple[float, int]:
    """(share of ranked candidate pairs whose mean token log-prob orders them as the scores do, pairs)."""
    s = logps / lengths.clamp(min=1)
    ranked = (rewards[:, :, None] > rewards[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    n = int(ranked.sum())
    return (float(((s[:, :, None] > s[:, None, :]) & ranked).sum()) / n if n else float("nan")), n


class RankTrainer(Trainer):
    """A Trainer whose loss is a ranking loss over each prompt's candidates."""

    def __init__(self, *args, loss_fn, loss_kwargs: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_fn, self.loss_kwargs = loss_fn, loss_kwargs
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}

    def group_logps(self, model, inputs):
        """Summed completion log-probs and completion lengths, each (B, K) (0 where padded)."""
        ids, mask = inputs["input_ids"], inputs["completion_mask"][:, 1:].float()  # (N, T), (N, T-1)
        logits = model(input_ids=ids, attention_mask=inputs["attention_mask"], use_cache=False).logits[:, :-1]
        tok_lp = -F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1),
                                  reduction="none").view_as(mask)  # (N, T-1)
        b, k = inputs["rewards"].shape
        flat = torch.zeros(b * k, device=ids.device)
        logps = flat.index_copy(0, inputs["slot"], (tok_lp * mask).sum(1)).view(b, k)
        lengths = flat.index_copy(0, inputs["slot"], mask.sum(1)).view(b, k)
        return logps, lengths

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logps, lengths = self.group_logps(model, inputs)
        rewards, valid = inputs["rewards"], inputs["valid"]
        loss = self.loss_fn(logps, lengths, rewards, valid, **self.loss_kwargs).mean()
        m = self._metrics["train" if model.training else "eval"]
        with torch.no_grad():
            acc, n = rank_accuracy(logps.detach(), lengths, rewards, valid)
            if n:
                m["rank_accuracy"].append(acc)
            best = rewards.masked_fill(~valid, float("-inf")).argmax(1, keepdim=True)
            m["best_logp_per_token"].append(float((logps.gather(1, best) / lengths.gather(1, best).clamp(min=1))
                                                  .mean()))
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict, *args, **kwargs):
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        logs.update({prefix + k: float(np.mean(v)) for k, v in self._metrics[mode].items() if v})
        self._metrics[mode].clear()
        super().log(logs, *args, **kwargs)


def build_trainer(cfg: RankTrainConfig, kind: str, loss_fn, loss_kwargs: dict):
    """(RankTrainer with its train and held-out groups, tokenizer, provenance, card counts); every bad
    input fails here, before any step."""
    from transformers import TrainingArguments

    groups, prov, counts = load_groups(cfg)
    model, tok, _ = common.load_model_and_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    if isinstance(groups[0]["prompt"], list):
        common.check_chat_template(tok, cfg.model)
    ds = tokenize_groups(groups, tok, cfg.max_length)
    heldout = None
    if cfg.eval_fraction > 0 and len(ds) >= 10:
        split = ds.train_test_split(test_size=cfg.eval_fraction, seed=cfg.seed)
        ds, heldout = split["train"], split["test"]
    if cfg.lora:
        from peft import get_peft_model

        model = get_peft_model(model, common.peft_config(cfg))
    cfg.output_dir = cfg.output_dir or common.default_output_dir(kind, prov)
    args = TrainingArguments(**common.training_args_common(cfg), remove_unused_columns=False)
    trainer = RankTrainer(model=model, args=args, train_dataset=ds, eval_dataset=heldout, processing_class=tok,
                          data_collator=GroupCollator(tok.pad_token_id), loss_fn=loss_fn, loss_kwargs=loss_kwargs)
    extra = {**counts, "train_prompts": len(ds), "mean_candidates": round(counts["candidates"] / counts["prompts"], 3)}
    return trainer, tok, prov, extra


def train_ranking(cfg: RankTrainConfig, kind: str, loss_fn, loss_kwargs: dict):
    """Load, check, train and save; returns the card path. `kind` names the card and output folder."""
    trainer, tok, prov, extra = build_trainer(cfg, kind, loss_fn, loss_kwargs)
    heldout = trainer.eval_dataset
    guard = common.guard_finite(trainer)
    trainer.train()
    common.raise_if_failed(guard, trainer, cfg, kind, prov, extra)
    if heldout is not None:
        m = trainer.evaluate()
        extra["eval"] = {"groups": len(heldout), "loss": m.get("eval_loss"),
                         "rank_accuracy": m.get("eval_rank_accuracy"),
                         "best_logp_per_token": m.get("eval_best_logp_per_token")}
    return common.save_outputs(trainer, tok, cfg, kind, prov, extra)
