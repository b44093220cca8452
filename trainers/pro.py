"""PRO, Preference Ranking Optimization (Song et al. 2023, arXiv 2306.17492): a listwise loss over
each prompt's ranked candidates, without a reference model.

    prefdata train pro --dataset self-reward-candidates@latest --set max_steps=20
    python -m trainers.pro --dataset self-reward@v1 --set reward_temperature=false

Rank the candidates by score, y^1 > ... > y^n, let s_i = log pi(y_i|x) / |y_i|, and sum n - 1
softmax (Plackett-Luce / InfoNCE) terms, each taking y^k as the positive against everything ranked
below it, then dropping it:
    L = -sum_k log [exp(s_k T_k^k) / sum_{i>=k} exp(s_i T_i^k)]  +  sft_weight * NLL(y^1)
with the paper's dynamic temperature T_i^k = 1 / (r_k - r_i), T_k^k = min_{i>k} T_i^k (a large score
gap makes the negative count less), or T = 1 (`trainers.losses.pro`). Candidates come from a
candidates table, one version's side table, or pairs (see `trainers.ranking`); for n = 2 and T = 1
the loss is -log s(s_1 - s_2).
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import Field

from trainers.common import atomic_output
from trainers.losses import pro
from trainers.ranking import RankTrainConfig, train_ranking


class PROTrainConfig(RankTrainConfig):
    """`prefdata train pro`: every field is a YAML key and a --set override."""

    learning_rate: float = Field(5e-6, gt=0, le=1, description="AdamW step size, in (0, 1].")
    sft_weight: float = Field(0.05, ge=0, le=100, description="beta in L = L_PRO + beta * L_SFT, the best candidate's "
                              "token-mean NLL, in [0, 100]; PRO keeps it small (0.05) so ranking dominates.")
    reward_temperature: bool = Field(True, description="PRO's dynamic temperature T_i^k = 1 / (r_k - r_i) from the "
                                     "score gaps (true), or T = 1 (false: plain Plackett-Luce on the ranks).")


Config = PROTrainConfig


LOSS = pro


def loss_kwargs(cfg: PROTrainConfig) -> dict:
    return {"sft_weight": cfg.sft_weight, "reward_temperature": cfg.reward_temperature}


@atomic_output("pro")
def train(cfg: PROTrainConfig) -> Path:
    """Train and save the model (or LoRA adapter), card and curves; returns the card path."""
    return train_ranking(cfg, "pro", LOSS, loss_kwargs(cfg))


def main(argv: list[str] | None = None) -> None:
    from trainers.cli import run_from_argv

    run_from_argv("pro", argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
