"""KTO (Ethayarajh et al. 2024, arXiv 2402.01306) on unpaired rows, or on pairs split into rows.

    prefdata train kto --dataset quickstart-rlcd@v1 --set max_steps=20
    python -m trainers.kto --dataset feedback.jsonl --set desirable_weight=1.2

Unpaired rows (`prompt`, `completion`, `label`) pass through; a pair becomes two rows, its chosen
reply desirable and its rejected reply undesirable. The paper (eq. 8 and section 4.2) recommends
lambda_D * n_D / (lambda_U * n_U) in [1, 4/3]. Outside that band the trainer warns and, with
`balance_weights` (default), moves `desirable_weight` to the nearest end of the band; the card
records both the asked-for and the used weights.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

from pydantic import Field

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
    """Unpaired rows as they are; pairs become two rows each (chosen desirable, rejected undesirable)."""
    if "label" in ds.column_names:
        common.require_columns(ds, ["prompt", "completion", "label"], "KTO")
        return ds.select_columns(["prompt", "completion", "label"])
    common.require_columns(ds, ["prompt", "chosen", "rejected"], "KTO (unpaired rows, or pairs to split)")

    def split(batch):
        n = len(batch["prompt"])
        return {"prompt": batch["prompt"] * 2, "completion": batch["chosen"] + batch["rejected"],
                "label": [True] * n + [False] * n}

    return ds.map(split, batched=True, remove_columns=ds.column_names)


def balanced_weights(n_d: int, n_u: int, w_d: float, w_u: float, adjust: bool = True):
    """(lambda_D, lambda_U, note or None): the weights to use and what was changed or found."""
    if n_d == 0 or n_u == 0:
        raise PrefdataError(f"KTO needs both desirable and undesirable rows (have {n_d} and {n_u})")
    ratio = w_d * n_d / (w_u * n_u)
    lo, hi = RATIO_BAND
    if lo <= ratio <= hi:
        return w_d, w_u, None
    found = (f"lambda_D*n_D/(lambda_U*n_U) = {w_d}*{n_d}/({w_u}*{n_u}) = {ratio:.3f} is outside the "
             f"recommended [1, 4/3]")
    if not adjust:
        return w_d, w_u, found
    new_w_d = (lo if ratio < lo else hi) * w_u * n_u / n_d
    return new_w_d, w_u, f"{found}; desirable_weight set to {new_w_d:.4f}"


def train(cfg: KTOTrainConfig) -> Path:
    from trl import KTOConfig, KTOTrainer

    ds, prov = common.load_dataset_ref(cfg.dataset, None)
    ds = unpaired(ds)
    n_d = sum(bool(x) for x in ds["label"])
    w_d, w_u, note = balanced_weights(n_d, len(ds) - n_d, cfg.desirable_weight, cfg.undesirable_weight,
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
    trainer = KTOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=tok,
                         peft_config=common.peft_config(cfg))
    trainer.train()
    return common.save_outputs(trainer, tok, cfg, "kto", prov, {
        "desirable_rows": n_d, "undesirable_rows": len(ds) - n_d, "desirable_weight_used": w_d,
        "undesirable_weight_used": w_u, "weight_note": note})


def main(argv: list[str] | None = None) -> None:
    from trainers.cli import run_from_argv

    run_from_argv("kto", argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
