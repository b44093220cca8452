"""Bradley-Terry reward models with per-pair margins and soft labels, straight from a dataset version.

    prefdata train reward --dataset quickstart-rlcd-clean@latest --set max_steps=50

loss = -[p log s(r_c - r_r - m) + (1 - p) log s(-(r_c - r_r - m))], with m the pair's `margin`
(Llama 2's margin loss; Secrets of RLHF II's adaptive margin) and p its `label_prob` (soft labels;
p = 1 is TRL's RewardTrainer loss). The saved model is a 1-output sequence classifier, so it plugs
into curation as a `reward_model` voter. Held-out pairwise accuracy goes into the card.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from trl import RewardConfig, RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference as RewardCollatorBase

from prefdata.models import DEFAULT_MODEL
from trainers import common
from trainers.losses import bradley_terry


@dataclass
class RewardTrainConfig(common.BaseTrainConfig):
    use_margin: bool = field(default=True, metadata={"help": "Subtract each pair's `margin` inside the sigmoid."})
    use_soft_labels: bool = field(default=True, metadata={"help": "Use each pair's `label_prob` (cDPO-style)."})
    eval_fraction: float = field(default=0.1, metadata={"help": "Held-out share for pairwise accuracy, in [0, 0.5]."})
    _task = "seq_cls"

    def __post_init__(self):
        if not 0 <= self.eval_fraction <= 0.5:
            raise ValueError("eval_fraction must be in [0, 0.5]")


class RewardCollator(RewardCollatorBase):
    def torch_call(self, examples):
        out = super().torch_call(examples)
        if "label_prob" in examples[0]:
            out["label_prob"] = torch.tensor([float(e["label_prob"]) for e in examples], dtype=torch.float32)
        return out


class PrefRewardTrainer(RewardTrainer):
    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "label_prob" not in self._signature_columns:
            self._signature_columns = list(self._signature_columns) + ["label_prob"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        margin = inputs.pop("margin", None)
        label_prob = inputs.pop("label_prob", None)
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        r_c, r_r = torch.chunk(out.logits.squeeze(-1), 2)
        loss = bradley_terry(r_c, r_r, margin=margin, label_prob=label_prob).mean()
        self._metrics[mode]["accuracy"].append((r_c > r_r).float().mean().item())
        self._metrics[mode]["margin"].append((r_c - r_r).mean().item())
        return (loss, out) if return_outputs else loss


def pairwise_accuracy(model, tok, ds, max_length: int) -> float:
    """Share of held-out pairs whose chosen reply gets the higher reward."""
    model.eval()
    correct = []
    with torch.inference_mode():
        for row in ds:
            texts = [tok.apply_chat_template(row["prompt"] + row[k], tokenize=False) for k in ("chosen", "rejected")]
            enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            r = model(**enc).logits.squeeze(-1)
            correct.append(float(r[0] > r[1]))
    return float(np.mean(correct)) if correct else float("nan")


def train(cfg: RewardTrainConfig) -> Path:
    ds, prov = common.load_dataset_ref(cfg.dataset, "pair")
    common.require_columns(ds, ["prompt", "chosen", "rejected"], "reward modelling")
    cols = ["prompt", "chosen", "rejected"]
    if cfg.use_margin:
        common.require_columns(ds, ["margin"], "the margin loss (set use_margin=false to train without)")
        ds = ds.map(lambda r: {"margin": 0.0 if r["margin"] is None else float(r["margin"])})
        cols.append("margin")
    if cfg.use_soft_labels:
        common.require_columns(ds, ["label_prob"], "soft labels (set use_soft_labels=false to train without)")
        common.check_label_prob(ds)
        cols.append("label_prob")
    ds = ds.select_columns(cols)
    model, tok, _ = common.load_model_and_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code, seq_cls=True)
    common.check_chat_template(tok, cfg.model)
    common.check_lengths(ds, tok, cfg.max_length)
    heldout = None
    if cfg.eval_fraction > 0 and len(ds) >= 10:
        split = ds.train_test_split(test_size=cfg.eval_fraction, seed=cfg.seed)
        ds, heldout = split["train"], split["test"]
    cfg.output_dir = cfg.output_dir or common.default_output_dir("reward", prov)
    args = RewardConfig(**common.training_args_common(cfg), max_length=cfg.max_length)
    trainer = PrefRewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                                peft_config=common.peft_config(cfg),
                                data_collator=RewardCollator(pad_token_id=tok.pad_token_id))
    trainer.train()
    extra = {}
    if heldout is not None:
        extra["heldout_pairwise_accuracy"] = pairwise_accuracy(trainer.model, tok, heldout, cfg.max_length)
        extra["heldout_pairs"] = len(heldout)
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
