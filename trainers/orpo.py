"""ORPO (Hong et al. 2024) through `trl.experimental.orpo`, from a dataset version.

    prefdata train orpo --dataset quickstart-rlcd@v1 --set max_steps=20

loss = NLL(chosen) - lambda * mean log sigmoid(log-odds(chosen) - log-odds(rejected)), with
length-averaged log-probabilities. No reference model.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from trainers import common


@dataclass
class ORPOTrainConfig(common.BaseTrainConfig):
    beta: float = 0.1  # lambda in the paper


def train(cfg: ORPOTrainConfig) -> Path:
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    ds, prov = common.load_dataset_ref(cfg.dataset, "pair")
    common.require_columns(ds, ["prompt", "chosen", "rejected"], "ORPO")
    ds = ds.select_columns(["prompt", "chosen", "rejected"])
    model, tok, _ = common.load_model_and_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    common.check_chat_template(tok, cfg.model)
    common.check_lengths(ds, tok, cfg.max_length)
    cfg.output_dir = cfg.output_dir or common.default_output_dir("orpo", prov)
    args = ORPOConfig(**common.training_args_common(cfg), beta=cfg.beta, max_length=cfg.max_length)
    trainer = ORPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                          peft_config=common.peft_config(cfg))
    trainer.train()
    trainer.save_model(cfg.output_dir)
    tok.save_pretrained(cfg.output_dir)
    return common.write_model_card(cfg.output_dir, "orpo", cfg, prov, trainer.state.log_history)


def main(argv: list[str] | None = None) -> None:
    from trainers.cli import run_from_argv

    run_from_argv("orpo", argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
