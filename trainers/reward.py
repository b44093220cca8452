"""Bradley-Terry reward models with per-pair margins and soft labels, straight from a dataset version.

    prefdata train reward --dataset quickstart-rlcd-clean@latest --set max_steps=50
    python -m trainers.reward --dataset pairs.parquet --set use_margin=false --set lora=true

loss = -[p log s(d) + (1 - p) log s(-d)], d = r_c - r_r - m, with m the pair's `margin` (Llama 2's
margin loss; Secrets of RLHF II's adaptive margin) and p its `label_prob` (soft labels; p = 1 is
TRL's RewardTrainer loss exactly). The output is a plain 1-logit
`AutoModelForSequenceClassification` plus tokenizer (LoRA adapters are merged), so it loads as an
HF reward model and plugs into curation as a `reward_model` voter. Held-out pairwise accuracy
(share of held-out pairs where r_c > r_r) goes into the card.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from trl import RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference as RewardCollatorBase

from trainers import common
from trainers.losses import bradley_terry


class RewardTrainConfig(common.BaseTrainConfig):
    """`prefdata train reward`: every field is a YAML key and a --set override."""

    learning_rate: float = Field(1e-5, gt=0, le=1, description="AdamW step size, in (0, 1].")
    use_margin: bool = Field(True, description="Subtract each pair's `margin` m inside the sigmoid (Llama 2 eq. 2; "
                                               "its small margin set {1, 2/3, 1/3, 0} worked best).")
    use_soft_labels: bool = Field(True, description="Weight both orders by each pair's `label_prob` p in [0, 1] "
                                                    "(cDPO-style soft label, Secrets of RLHF II).")
    eval_fraction: float = Field(0.1, ge=0, le=0.5, description="Held-out share of pairs for pairwise accuracy, "
                                                                "in [0, 0.5]; needs >= 10 pairs.")


Config = RewardTrainConfig


class RewardCollator(RewardCollatorBase):
    """TRL's reward collator (which keeps `margin`) plus `label_prob`."""

    def torch_call(self, examples):
        out = super().torch_call(examples)
        if "label_prob" in examples[0]:
            out["label_prob"] = torch.tensor([float(e["label_prob"]) for e in examples], dtype=torch.float32)
        return out


class PrefRewardTrainer(RewardTrainer):
    """RewardTrainer whose loss is `losses.bradley_terry` with per-pair margin and soft label."""

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "label_prob" not in self._signature_columns:
            self._signature_columns = list(self._signature_columns) + ["label_prob"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        margin, label_prob = inputs.get("margin"), inputs.get("label_prob")
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        r_c, r_r = torch.chunk(out.logits.squeeze(-1), 2)  # batch is [chosen..., rejected...]
        loss = bradley_terry(r_c, r_r, margin=margin, label_prob=label_prob).mean()
        gather = self.accelerator.gather_for_metrics
        with torch.no_grad():
            self._metrics[mode]["accuracy"].append(gather((r_c > r_r).float()).mean().item())
            self._metrics[mode]["margin"].append(gather(r_c - r_r).mean().item())
        return (loss, out) if return_outputs else loss


def pairwise_accuracy(model, tok, ds, max_length: int) -> float:
    """Share of pairs whose chosen reply gets the higher reward (ties count as wrong)."""
    model.eval()
    correct = []
    with torch.inference_mode():
        for row in ds:
            texts = [tok.apply_chat_template(row["prompt"] + row[k], tokenize=False) for k in ("chosen", "rejected")]
            enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            r = model(**enc).logits.squeeze(-1)  # (2,)
            correct.append(float(r[0] > r[1]))
    return float(np.mean(correct)) if correct else float("nan")


def prepare_pairs(ds, cfg: RewardTrainConfig):
    """(pairs with the columns the loss reads, tie note for the card or None). Ties (label_prob 0.5
    or null) stay at 0.5 with soft labels and are dropped without them."""
    common.require_columns(ds, ["prompt", "chosen", "rejected"], "reward modelling")
    ds, ties = common.resolve_ties(ds, soft=cfg.use_soft_labels, what="the reward loss without soft labels")
    cols = ["prompt", "chosen", "rejected"]
    if cfg.use_margin:
        common.require_columns(ds, ["margin"], "the margin loss (set use_margin=false to train without)")
        ds = ds.map(lambda r: {"margin": 0.0 if r["margin"] is None else float(r["margin"])})
        cols.append("margin")
    if cfg.use_soft_labels:
        common.require_columns(ds, ["label_prob"], "soft labels (set use_soft_labels=false to train without)")
        cols.append("label_prob")
    return ds.select_columns(cols), ties


def train(cfg: RewardTrainConfig) -> Path:
    from trl import RewardConfig

    ds, prov = common.load_dataset_ref(cfg.dataset, "pair")
    ds, ties = prepare_pairs(ds, cfg)
    model, tok, _ = common.load_model_and_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code, seq_cls=True)
    if common.is_conversational(ds):
        common.check_chat_template(tok, cfg.model)
    common.check_lengths(ds, tok, cfg.max_length)
    heldout = None
    if cfg.eval_fraction > 0 and len(ds) >= 10:
        split = ds.train_test_split(test_size=cfg.eval_fraction, seed=cfg.seed)
        ds, heldout = split["train"], split["test"]
    cfg.output_dir = cfg.output_dir or common.default_output_dir("reward", prov)
    args = RewardConfig(**common.training_args_common(cfg), max_length=cfg.max_length)
    trainer = PrefRewardTrainer(model=model, args=args, train_dataset=ds, eval_dataset=heldout, processing_class=tok,
                                peft_config=common.peft_config(cfg, task="SEQ_CLS"),
                                data_collator=RewardCollator(pad_token_id=tok.pad_token_id))
    guard = common.guard_finite(trainer)
    trainer.train()
    extra = {"train_pairs": len(ds), **(ties or {})}
    common.raise_if_failed(guard, trainer, cfg, "reward", prov, extra)
    if heldout is not None:
        extra["heldout_pairwise_accuracy"] = pairwise_accuracy(trainer.model, tok, heldout, cfg.max_length)
        extra["heldout_pairs"] = len(heldout)
        m = trainer.evaluate()  # the training loss (margin, soft labels) on held-out pairs, batched like training
        extra["eval"] = {"pairs": len(heldout), "loss": m.get("eval_loss"), "reward_accuracy": m.get("eval_accuracy"),
                         "reward_margin": m.get("eval_margin")}
    if cfg.lora:
        trainer.model = trainer.model.merge_and_unload()  # a plain classifier, usable as a voter
    trainer.model.save_pretrained(cfg.output_dir)
    tok.save_pretrained(cfg.output_dir)
    return common.write_model_card(cfg.output_dir, "reward", cfg, prov, trainer.state.log_history, extra)


def main(argv: list[str] | None = None) -> None:
    from trainers.cli import run_from_argv

    run_from_argv("reward", argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
