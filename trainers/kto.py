"""KTO (Ethayarajh et al. 2024, arXiv 2402.01306) on unpaired rows, or on pairs split into rows.

    prefdata train kto --dataset quickstart-rlcd@v1 --set max_steps=20
    python -m trainers.kto --dataset feedback.jsonl --set desirable_weight=1.2

Unpaired rows (`prompt`, `completion`, `label`, optional `weight`) pass through, each row's loss
scaled by its `weight`; a pair becomes two rows, its chosen reply desirable and its rejected reply
undesirable. The paper (eq. 8 and section 4.2) recommends
lambda_D * n_D / (lambda_U * n_U) in [1, 4/3]. Outside that band the trainer warns and, with
`balance_weights` (default), moves `desirable_weight` to the nearest end of the band; the card
records both the asked-for and the used weights.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from pydantic import Field
from trl import KTOTrainer
from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

from prefdata.errors import PrefdataError
from trainers import common

RATIO_BAND = (1.0, 4.0 / 3.0)


class KTOTrainConfig(common.BaseTrainConfig):
    """`prefdata train kto`: every field is a YAML key and a --set override."""

    beta: float = Field(0.1, gt=0, le=10, description="KTO's beta (eq. 8): inverse KL strength, in (0, 10].")
    desirable_weight: float = Field(1.0, gt=0, description="lambda_D (eq. 8), > 0.")
    undesirable_weight: float = Field(1.0, gt=0, description="lambda_U (eq. 8), > 0.")
    balance_weights: bool = Field(True, description="Move desirable_weight into the recommended band "
                                                    "lambda_D n_D / (lambda_U n_U) in [1, 4/3]; false = warn only.")
    batch_size: int = Field(4, ge=2, description="Rows per step, >= 2: KTO's KL estimate z0 pairs each prompt "
                                                 "with another row's completion in the batch.")


Config = KTOTrainConfig


def unpaired(ds):
    """Unpaired rows as they are (with their per-row `weight`, null = 1); pairs become two rows each
    (chosen desirable, rejected undesirable), weight 1."""
    if "label" in ds.column_names:
        common.require_columns(ds, ["prompt", "completion", "label"], "KTO")
        if "weight" not in ds.column_names:
            return ds.select_columns(["prompt", "completion", "label"])
        ds = ds.select_columns(["prompt", "completion", "label", "weight"])
        return ds.map(lambda r: {"weight": 1.0 if r["weight"] is None else float(r["weight"])})
    common.require_columns(ds, ["prompt", "chosen", "rejected"], "KTO (unpaired rows, or pairs to split)")

    def split(batch):
        n = len(batch["prompt"])
        return {"prompt": batch["prompt"] * 2, "completion": batch["chosen"] + batch["rejected"],
                "label": [True] * n + [False] * n}

    return ds.map(split, batched=True, remove_columns=ds.column_names)


class WeightedCollator(DataCollatorForUnpairedPreference):
    """TRL's unpaired collator plus the per-row `weight`, as a (b,) tensor."""

    def torch_call(self, examples):
        out = super().torch_call(examples)
        if "weight" in examples[0]:
            out["weight"] = torch.tensor([float(e["weight"]) for e in examples], dtype=torch.float32)
        return out


class WeightedKTOTrainer(KTOTrainer):
    """KTOTrainer whose per-row loss is multiplied by the row's `weight` (TRL drops the column).

    TRL forms the loss as cat(lambda_D * chosen_losses, lambda_U * rejected_losses), chosen rows in
    batch order first; for the length of one call lambda_D and lambda_U become (n,) tensors holding
    lambda times the weights of those rows, so the rest of TRL's loss runs unchanged."""

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "weight" not in self._signature_columns:
            self._signature_columns = list(self._signature_columns) + ["weight"]

    def _compute_loss(self, model, inputs, return_outputs):
        w = inputs.pop("weight", None)  # popped: TRL passes every unknown key on to the model
        if w is None:
            return super()._compute_loss(model, inputs, return_outputs)
        desirable = inputs["label"].bool().to(w.device)
        w_d, w_u = self.desirable_weight, self.undesirable_weight
        self.desirable_weight, self.undesirable_weight = w_d * w[desirable], w_u * w[~desirable]
        try:
            return super()._compute_loss(model, inputs, return_outputs)
        finally:
            self.desirable_weight, self.undesirable_weight = w_d, w_u


def balanced_weights(n_d: float, n_u: float, w_d: float, w_u: float, adjust: bool = True):
    """(lambda_D, lambda_U, note or None): the weights to use and what was changed or found.
    n_d and n_u are the (weighted) amounts of desirable and undesirable rows."""
    if n_d <= 0 or n_u <= 0:
        raise PrefdataError(f"KTO needs both desirable and undesirable rows with positive weight "
                            f"(have {n_d:g} and {n_u:g})")
    ratio = w_d * n_d / (w_u * n_u)
    lo, hi = RATIO_BAND
    if lo <= ratio <= hi:
        return w_d, w_u, None
    found = (f"lambda_D*n_D/(lambda_U*n_U) = {w_d}*{n_d:g}/({w_u}*{n_u:g}) = {ratio:.3f} is outside the "
             f"recommended [1, 4/3]")
    if not adjust:
        return w_d, w_u, found
    new_w_d = (lo if ratio < lo else hi) * w_u * n_u / n_d
    return new_w_d, w_u, f"{found}; desirable_weight set to {new_w_d:.4f}"


@common.atomic_output("kto")
def train(cfg: KTOTrainConfig) -> Path:
    from trl import KTOConfig

    ds, prov = common.load_dataset_ref(cfg.dataset, None)
    ties = None
    if "label" not in ds.column_names and "label_prob" in ds.column_names:
        common.check_label_prob(ds)  # pairs: a label_prob of 1.5 means broken data
        # A tied pair split into rows would call its "chosen" reply desirable on no evidence.
        ds, ties = common.resolve_ties(ds, soft=False, what="KTO on pairs")
    ds = unpaired(ds)
    labels = [bool(x) for x in ds["label"]]
    n_d = sum(labels)
    weights = ds["weight"] if "weight" in ds.column_names else [1.0] * len(ds)
    # The paper's band is on amounts of signal: with per-row weights, a row counts as its weight.
    s_d = sum(w for w, lab in zip(weights, labels) if lab)
    s_u = sum(w for w, lab in zip(weights, labels) if not lab)
    w_d, w_u, note = balanced_weights(s_d, s_u, cfg.desirable_weight, cfg.undesirable_weight,
                                      cfg.balance_weights)
    if note:
        print(f"warning: {note}", file=sys.stderr)
    model, tok, _ = common.load_model_and_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    if common.is_conversational(ds):
        common.check_chat_template(tok, cfg.model)
    common.check_lengths(ds, tok, cfg.max_length, completions=("completion",))
    cfg.output_dir = cfg.output_dir or common.default_output_dir("kto", prov)
    args = KTOConfig(**common.training_args_common(cfg), beta=cfg.beta, desirable_weight=w_d,
                     undesirable_weight=w_u, max_length=cfg.max_length)
    ref = None if cfg.lora else copy.deepcopy(model).eval()  # LoRA: the base weights are the reference
    trainer = WeightedKTOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds,
                                 processing_class=tok,
                                 peft_config=common.peft_config(cfg),
                                 data_collator=WeightedCollator(pad_token_id=tok.pad_token_id,
                                                                max_length=cfg.max_length))
    extra = {"desirable_rows": n_d, "undesirable_rows": len(ds) - n_d, "desirable_weight_used": w_d,
             "undesirable_weight_used": w_u, "weight_note": note, **(ties or {}),
             "row_weights": ({"column": "weight", "min": min(weights), "max": max(weights),
                              "mean": sum(weights) / len(weights)} if "weight" in ds.column_names else None)}
    guard = common.guard_finite(trainer)
    trainer.train()
    common.raise_if_failed(guard, trainer, cfg, "kto", prov, extra)
    return common.save_outputs(trainer, tok, cfg, "kto", prov, extra)


def main(argv: list[str] | None = None) -> None:
    from trainers.cli import run_from_argv

    run_from_argv("kto", argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
