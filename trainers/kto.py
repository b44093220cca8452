"""KTO (Ethayarajh et al. 2024) on unpaired rows, or on pairs split into desirable/undesirable rows.

    prefdata train kto --dataset quickstart-rlcd@v1 --set max_steps=20

KTO's paper recommends lambda_D * n_D / (lambda_U * n_U) in [1, 4/3]. When the configured weights
fall outside that band, `desirable_weight` is moved to the nearest end of it, and the card says so.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from trl import KTOConfig, KTOTrainer

from trainers import common

RATIO_BAND = (1.0, 4.0 / 3.0)


@dataclass
class KTOTrainConfig(common.BaseTrainConfig):
    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0


def unpaired(ds):
    """Pairs become two rows each (chosen: desirable, rejected: undesirable); unpaired rows pass through."""
    if "label" in ds.column_names:
        common.require_columns(ds, ["prompt", "completion", "label"], "KTO")
        return ds.select_columns(["prompt", "completion", "label"])
    common.require_columns(ds, ["prompt", "chosen", "rejected"], "KTO (from pairs)")

    def split(batch):
        n = len(batch["prompt"])
        return {"prompt": batch["prompt"] * 2, "completion": batch["chosen"] + batch["rejected"],
                "label": [True] * n + [False] * n}

    return ds.map(split, batched=True, remove_columns=ds.column_names)


def balanced_weights(n_d: int, n_u: int, w_d: float, w_u: float) -> tuple[float, float, str | None]:
    if n_d == 0 or n_u == 0:
        from prefdata.errors import PrefdataError

        raise PrefdataError(f"KTO needs both desirable and undesirable rows (have {n_d} and {n_u})")
    ratio = w_d * n_d / (w_u * n_u)
    lo, hi = RATIO_BAND
    if lo <= ratio <= hi:
        return w_d, w_u, None
    target = lo if ratio < lo else hi
    new_w_d = target * w_u * n_u / n_d
    return new_w_d, w_u, (f"desirable_weight {w_d} gave lambda_D*n_D/(lambda_U*n_U) = {ratio:.3f}, outside "
                          f"[1, 4/3]; set to {new_w_d:.4f}")


def train(cfg: KTOTrainConfig) -> Path:
    ds, prov = common.load_dataset_ref(cfg.dataset, "pair")
    ds = unpaired(ds)
    labels = ds["label"]
    n_d = sum(bool(x) for x in labels)
    w_d, w_u, note = balanced_weights(n_d, len(labels) - n_d, cfg.desirable_weight, cfg.undesirable_weight)
    if note:
        print(f"warning: {note}", file=sys.stderr)
    model, tok, _ = common.load_model_and_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    common.check_chat_template(tok, cfg.model)
    common.check_lengths(ds, tok, cfg.max_length)
    cfg.output_dir = cfg.output_dir or common.default_output_dir("kto", prov)
    args = KTOConfig(**common.training_args_common(cfg), beta=cfg.beta, desirable_weight=w_d,
                     undesirable_weight=w_u, max_length=cfg.max_length)
    ref = None
    if not cfg.lora:
        import copy

        ref = copy.deepcopy(model).eval()
    trainer = KTOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=tok,
                         peft_config=common.peft_config(cfg))
    trainer.train()
    trainer.save_model(cfg.output_dir)
    tok.save_pretrained(cfg.output_dir)
    return common.write_model_card(cfg.output_dir, "kto", cfg, prov, trainer.state.log_history,
                                   {"desirable_weight": w_d, "undesirable_weight": w_u, "weight_note": note})


def main(argv: list[str] | None = None) -> None:
    from trainers.cli import run_from_argv

    run_from_argv("kto", argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
