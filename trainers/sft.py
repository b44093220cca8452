"""Chat SFT with the loss on completion tokens only, from a dataset version.

    prefdata train sft --dataset quickstart-rlcd@v1 --set max_steps=20          # prompt -> chosen
    prefdata train sft --dataset bpo-train@v1 --set target=optimized_prompt     # the BPO rewriter
    python -m trainers.sft --dataset completions.jsonl --set lora=true

Pairs train on (prompt, chosen); completion or unpaired rows on (prompt, completion) (unpaired rows:
desirable ones only). With `target=optimized_prompt` (chosen automatically when that is the only
target column), rows of (prompt, optimized_prompt) train a BPO prompt rewriter (Cheng et al. 2023,
arXiv 2311.04155): the input is the original prompt under `prefdata.prompts.bpo`'s instruction,
the target the optimized prompt, and the loss covers the target tokens only.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import Field

from prefdata.prompts.bpo import REWRITER_INSTRUCTION
from trainers import common


class SFTTrainConfig(common.BaseTrainConfig):
    """`prefdata train sft`: every field is a YAML key and a --set override."""

    target: str = Field("auto", description="Target column: auto (chosen for pairs, completion for completion/"
                                            "unpaired rows, optimized_prompt for BPO rows) or a column name.")
    learning_rate: float = Field(2e-5, gt=0, le=1, description="AdamW step size, in (0, 1].")


Config = SFTTrainConfig


def pick_target(columns: list[str], target: str) -> str:
    if target != "auto":
        return target
    for col in ("chosen", "completion", "optimized_prompt"):
        if col in columns:
            return col
    return "chosen"  # require_columns then names what is missing


def _text(value) -> str:
    return value[-1]["content"] if isinstance(value, list) else str(value)


def to_prompt_completion(ds, target: str = "auto"):
    """Conversational (prompt, completion) rows for TRL's SFTTrainer with completion-only loss."""
    cols = ds.column_names
    target = pick_target(cols, target)
    common.require_columns(ds, ["prompt", target], f"SFT on '{target}'")
    if "label" in cols and target == "completion":  # unpaired rows: imitate the desirable ones only
        ds = ds.filter(lambda r: bool(r["label"]))
    if target in ("chosen", "completion"):
        return ds.map(lambda r: {"prompt": r["prompt"], "completion": r[target]}, remove_columns=cols)

    def rewriter(r):
        return {"prompt": [{"role": "user", "content": REWRITER_INSTRUCTION.format(prompt=_text(r["prompt"]))}],
                "completion": [{"role": "assistant", "content": _text(r[target])}]}

    return ds.map(rewriter, remove_columns=cols)


@common.atomic_output("sft")
def train(cfg: SFTTrainConfig) -> Path:
    from trl import SFTConfig, SFTTrainer

    ds, prov = common.load_dataset_ref(cfg.dataset, None)  # pairs, completions, unpaired or BPO rows
    ds = to_prompt_completion(ds, cfg.target)
    if len(ds) == 0:
        from prefdata.errors import PrefdataError

        raise PrefdataError(f"{cfg.dataset}: no rows to imitate (no desirable completions)")
    model, tok, _ = common.load_model_and_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    common.check_chat_template(tok, cfg.model)
    common.check_lengths(ds, tok, cfg.max_length, completions=("completion",))
    cfg.output_dir = cfg.output_dir or common.default_output_dir("sft", prov)
    args = SFTConfig(**common.training_args_common(cfg), max_length=cfg.max_length, completion_only_loss=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                         peft_config=common.peft_config(cfg))
    guard = common.guard_finite(trainer)
    trainer.train()
    common.raise_if_failed(guard, trainer, cfg, "sft", prov, {"examples": len(ds)})
    return common.save_outputs(trainer, tok, cfg, "sft", prov, {"examples": len(ds)})


def main(argv: list[str] | None = None) -> None:
    from trainers.cli import run_from_argv

    run_from_argv("sft", argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
