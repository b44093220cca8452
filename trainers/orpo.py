"""ORPO (Hong et al. 2024, arXiv 2403.07691) through `trl.experimental.orpo`, from a dataset version.

    prefdata train orpo --dataset quickstart-rlcd@v1 --set max_steps=20
    python -m trainers.orpo --dataset pairs.parquet --set beta=0.2

loss = NLL(chosen) - lambda * mean log sigmoid(log-odds(chosen) - log-odds(rejected)) (eq. 6-7),
with length-averaged log-probabilities; no reference model, so it starts from a base model.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import Field

from trainers import common


class ORPOTrainConfig(common.BaseTrainConfig):
    """`prefdata train orpo`: every field is a YAML key and a --set override."""

    beta: float = Field(0.1, gt=0, le=10, description="lambda in ORPO eq. 6: weight of the odds-ratio term, "
                                                      "in (0, 10]; the paper uses 0.1-0.25.")
    learning_rate: float = Field(8e-6, gt=0, le=1, description="AdamW step size, in (0, 1]; the paper: 8e-6.")


Config = ORPOTrainConfig


@common.atomic_output("orpo")
def train(cfg: ORPOTrainConfig) -> Path:
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    ds, prov = common.load_dataset_ref(cfg.dataset, "pair")
    common.require_columns(ds, ["prompt", "chosen", "rejected"], "ORPO")
    ds, ties = common.resolve_ties(ds, soft=False, what="ORPO")  # the odds-ratio term takes hard labels
    ds = ds.select_columns(["prompt", "chosen", "rejected"])
    model, tok, _ = common.load_model_and_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    if common.is_conversational(ds):
        common.check_chat_template(tok, cfg.model)
    common.check_lengths(ds, tok, cfg.max_length)
    cfg.output_dir = cfg.output_dir or common.default_output_dir("orpo", prov)
    # remove_unused_columns=False: what its pairwise collator needs (TRL would otherwise warn and set it).
    args = ORPOConfig(**common.training_args_common(cfg), beta=cfg.beta, max_length=cfg.max_length,
                      remove_unused_columns=False)
    trainer = ORPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                          peft_config=common.peft_config(cfg))
    guard = common.guard_finite(trainer)
    trainer.train()
    extra = {"pairs": len(ds), **(ties or {})}
    common.raise_if_failed(guard, trainer, cfg, "orpo", prov, extra)
    return common.save_outputs(trainer, tok, cfg, "orpo", prov, extra)


def main(argv: list[str] | None = None) -> None:
    from trainers.cli import run_from_argv

    run_from_argv("orpo", argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
