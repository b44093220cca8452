"""Chat SFT with the loss on completions only, from a dataset version.

    prefdata train sft --dataset quickstart-rlcd@v1 --set max_steps=20     # prompt -> chosen
    prefdata train sft --dataset bpo-pairs@v1 --set target=optimized_prompt  # the BPO rewriter

Pair data trains on (prompt, chosen); completion data on (prompt, completion). With
`target=optimized_prompt`, rows of (prompt, optimized_prompt) train a BPO prompt rewriter
(Cheng et al. 2023): the input is the original prompt under `prefdata.prompts.bpo`'s
instruction, and the target is the optimized prompt.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from trl import SFTConfig, SFTTrainer

from trainers import common

from prefdata.prompts.bpo import REWRITER_INSTRUCTION, REWRITER_TEMPLATE_VERSION  # noqa: F401


@dataclass
class SFTTrainConfig(common.BaseTrainConfig):
    target: str = field(default="auto", metadata={"help": "auto (chosen for pairs, completion otherwise) or a column "
                                                          "name such as optimized_prompt (BPO rewriter)."})
    learning_rate: float = 2e-5


def to_prompt_completion(ds, target: str):
    cols = ds.column_names
    if target == "auto":
        target = "chosen" if "chosen" in cols else "completion"
    common.require_columns(ds, ["prompt", target], f"SFT on '{target}'")
    if target in ("chosen", "completion"):
        return ds.map(lambda r: {"prompt": r["prompt"], "completion": r[target]}, remove_columns=cols)

    def rewriter(r):
        text = r["prompt"][-1]["content"] if isinstance(r["prompt"], list) else r["prompt"]
        out = r[target][-1]["content"] if isinstance(r[target], list) else r[target]
        return {"prompt": [{"role": "user", "content": REWRITER_INSTRUCTION.format(prompt=text)}],
                "completion": [{"role": "assistant", "content": out}]}

    return ds.map(rewriter, remove_columns=cols)


def train(cfg: SFTTrainConfig) -> Path:
    ds, prov = common.load_dataset_ref(cfg.dataset, None)  # pairs, completions or BPO rows: inferred
    ds = to_prompt_completion(ds, cfg.target)
    model, tok, _ = common.load_model_and_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    common.check_chat_template(tok, cfg.model)
    common.check_lengths(ds, tok, cfg.max_length)
    cfg.output_dir = cfg.output_dir or common.default_output_dir("sft", prov)
    args = SFTConfig(**common.training_args_common(cfg), max_length=cfg.max_length, completion_only_loss=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                         peft_config=common.peft_config(cfg))
    trainer.train()
    trainer.save_model(cfg.output_dir)
    tok.save_pretrained(cfg.output_dir)
    return common.write_model_card(cfg.output_dir, "sft", cfg, prov, trainer.state.log_history)


def main(argv: list[str] | None = None) -> None:
    from trainers.cli import run_from_argv

    run_from_argv("sft", argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
