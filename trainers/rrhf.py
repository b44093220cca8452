"""RRHF (Yuan et al. 2023, arXiv 2304.05302): rank responses to align LMs, without a reference model.

    prefdata train rrhf --dataset self-reward-candidates@latest --set max_steps=20
    prefdata train rrhf --dataset self-reward@v1            # finds the version's candidates side table
    python -m trainers.rrhf --dataset candidates.parquet --set rank_weight=2 --set lora=true

Per prompt, every candidate y_i with its score r_i (a judge's or a reward model's) is scored by the
policy as p_i = log pi(y_i|x) / |y_i|^length_penalty, and
    L = rank_weight * sum_{r_i < r_j} max(0, p_i - p_j)  +  sft_weight * NLL(best candidate)
(eq. 2-4; `trainers.losses.rrhf`). The candidates come from a candidates table, one version's side
table, or pairs (see `trainers.ranking`). The card gives the ranking accuracy (share of candidate
pairs the policy's mean log-probs order as the scores do) on held-out prompts.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import Field

from trainers.common import atomic_output
from trainers.losses import rrhf
from trainers.ranking import RankTrainConfig, train_ranking


class RRHFTrainConfig(RankTrainConfig):
    """`prefdata train rrhf`: every field is a YAML key and a --set override."""

    learning_rate: float = Field(2e-5, gt=0, le=1, description="AdamW step size, in (0, 1]; RRHF fine-tunes "
                                 "Alpaca-7B at 2e-5.")
    rank_weight: float = Field(1.0, ge=0, le=100, description="Weight of the ranking hinge sum in "
                               "L = rank_weight * L_rank + sft_weight * L_ft, in [0, 100]; the paper adds the two "
                               "terms unweighted (1.0).")
    sft_weight: float = Field(1.0, ge=0, le=100, description="Weight of L_ft, the best candidate's token-mean NLL, in "
                              "[0, 100].")
    length_penalty: float = Field(1.0, ge=0, le=2, description="p_i = log pi(y_i|x) / |y_i|^length_penalty, in "
                                  "[0, 2]: 1 is the paper's length-normalised score, 0 the raw sum (favours short "
                                  "answers).")


Config = RRHFTrainConfig


LOSS = rrhf


def loss_kwargs(cfg: RRHFTrainConfig) -> dict:
    return {"rank_weight": cfg.rank_weight, "sft_weight": cfg.sft_weight, "length_penalty": cfg.length_penalty}


@atomic_output("rrhf")
def train(cfg: RRHFTrainConfig) -> Path:
    """Train and save the model (or LoRA adapter), card and curves; returns the card path."""
    return train_ranking(cfg, "rrhf", LOSS, loss_kwargs(cfg))


def main(argv: list[str] | None = None) -> None:
    from trainers.cli import run_from_argv

    run_from_argv("rrhf", argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
