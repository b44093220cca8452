"""The `clean_labels` pipeline step: vote, apply policies, commit a new version with a card.

    prefdata run pipelines/clean_labels.yaml
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from prefdata.curation.policies import PolicyConfig, apply
from prefdata.curation.vote import combine
from prefdata.rewards.voters import HeadsVoter, JudgeVoter, VoterSpec
from prefdata.schema import conform


class CleanLabelsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    voters: list[VoterSpec] = Field(default_factory=lambda: [HeadsVoter()],
                                    description="Reward sources; mix heads, reward_model and judge voters.")
    policy: PolicyConfig = Field(default_factory=lambda: PolicyConfig(flip_bottom_q=0.1))
    temperature: float | None = Field(None, gt=0, description="Fix label_prob = sigmoid(strength/T); "
                                      "default fits the slope to the dataset's own labels.")

    @property
    def needs_engine(self) -> bool:
        return any(isinstance(v, JudgeVoter) for v in self.voters)


def collect_votes(table: pa.Table, cfg: CleanLabelsConfig, *, seed: int = 0, engine_for=None,
                  progress: bool = True) -> dict[str, np.ndarray]:
    from prefdata.rewards import voters as V

    out: dict[str, np.ndarray] = {}
    for spec in cfg.voters:
        if isinstance(spec, V.HeadsVoter):
            out.update(V.heads_votes(table, spec, seed=seed, progress=progress))
        elif isinstance(spec, V.RewardModelVoter):
            out.update(V.reward_model_votes(table, spec, progress=progress))
        else:
            if engine_for is None:
                from prefdata.errors import ConfigError

                raise ConfigError("a judge voter needs an engine (run it inside a pipeline or pass engine_for)")
            out.update(V.judge_votes(table, engine_for(spec.engine)))
    return out


def curate(table: pa.Table, cfg: CleanLabelsConfig, *, seed: int = 0, engine_for=None, votes: dict | None = None,
           source: str = "clean_labels", progress: bool = True):
    """Vote + policies. Returns (kept PAIR table, dropped PAIR table with drop_reason, vote frame)."""
    votes = votes if votes is not None else collect_votes(table, cfg, seed=seed, engine_for=engine_for, progress=progress)
    frame = combine(table.column("id").to_pylist(), votes, temperature=cfg.temperature, source=source)
    voter_ids = json.dumps(list(votes))
    pairs = pl.from_arrow(table)
    kept, dropped = apply(pairs, frame, cfg.policy)
    to_table = lambda df: conform(df.with_columns(pl.lit(voter_ids).alias("voters")).to_arrow(), "pair")  # noqa: E731
    return to_table(kept), to_table(dropped), frame


def figures_and_sections(kept: pa.Table, dropped: pa.Table, frame: pl.DataFrame, votes: dict[str, np.ndarray],
                         table: pa.Table):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = frame["strength_mean"].to_numpy()
    sd = frame["strength_std"].to_numpy()
    order = np.argsort(s)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ranks = np.arange(len(s)) / max(len(s) - 1, 1)
    ax.scatter(ranks, sd[order], s=4, alpha=0.4)
    bins = np.linspace(0, 1, 21)
    idx = np.clip(np.digitize(ranks, bins) - 1, 0, 19)
    means = [sd[order][idx == b].mean() if (idx == b).any() else np.nan for b in range(20)]
    ax.plot((bins[:-1] + bins[1:]) / 2, means, color="k", lw=1.5, label="mean per 5% band")
    ax.set_xlabel("strength rank (0 = weakest)"), ax.set_ylabel("voter std"), ax.set_title("Disagreement vs strength")
    ax.legend(), fig.tight_layout()

    names = list(votes)
    mat = np.stack([votes[n] for n in names], 1)
    corr = np.corrcoef(mat.T) if len(names) > 1 else np.ones((1, 1))
    off = corr[~np.eye(len(names), dtype=bool)] if len(names) > 1 else np.array([1.0])
    sign_agree = (np.sign(mat) == np.sign(s)[:, None]).mean()
    n = table.num_rows
    flipped = int(np.asarray(kept.column("flipped").to_pylist(), dtype=bool).sum() -
                  np.asarray(table.column("flipped").to_pylist(), dtype=bool).sum()) if n else 0
    reasons = (pl.from_arrow(dropped.select(["drop_reason"])).group_by("drop_reason").len()
               if dropped.num_rows else pl.DataFrame({"drop_reason": [], "len": []}))
    counts = "\n".join([
        "| | pairs |", "|---|---|", f"| input | {n} |", f"| kept | {kept.num_rows} |",
        f"| flipped (this step) | {flipped} |", f"| dropped | {dropped.num_rows} |",
        f"| negative strength before policies | {int((s < 0).sum())} ({(s < 0).mean():.1%}) |",
        *[f"| dropped: {r} | {c} |" for r, c in reasons.iter_rows()],
    ])
    agreement = (f"{len(names)} voters. Mean pairwise correlation of their votes: {off.mean():.3f} "
                 f"(min {off.min():.3f}). Share of individual votes that agree in sign with the pair's mean "
                 f"strength: {sign_agree:.1%}.")
    worst = frame.sort("strength_mean").head(10)
    lookup = {r["id"]: r for r in table.select(["id", "prompt", "chosen", "rejected"]).to_pylist()
              if r["id"] in set(worst["id"].to_list())}
    rows = ["| strength | std | prompt (last turn) | chosen (as labelled) | rejected (as labelled) |",
            "|---|---|---|---|---|"]
    clip = lambda t: t.replace("|", "\\|").replace("\n", " ")[:120]  # noqa: E731
    for r in worst.iter_rows(named=True):
        p = lookup[r["id"]]
        rows.append(f"| {r['strength_mean']:.2f} | {r['strength_std']:.2f} | {clip(p['prompt'][-1]['content'])} | "
                    f"{clip(p['chosen'][-1]['content'])} | {clip(p['rejected'][-1]['content'])} |")
    sections = [("Label cleaning", counts), ("Voter agreement", agreement),
                ("Ten most disputed pairs (lowest strength, before policies)", "\n".join(rows))]
    return {"strength_ucurve": fig}, sections


def run_clean_labels(cfg: CleanLabelsConfig, table: pa.Table, ctx):
    from prefdata.pipeline import StepResult

    table = conform(table, "pair")
    engine_for = (lambda override: ctx.engine(override)) if cfg.needs_engine else None
    votes = collect_votes(table, cfg, seed=ctx.seed, engine_for=engine_for)
    kept, dropped, frame = curate(table, cfg, seed=ctx.seed, votes=votes, source=ctx.step.input)
    figures, sections = figures_and_sections(kept, dropped, frame, votes, table)
    report = {"input": table.num_rows, "kept": kept.num_rows, "dropped": dropped.num_rows}
    return StepResult(tables={"train": kept}, kind="pair", card_sections=sections, figures=figures,
                      lineage={"voters": list(votes), "seeds": {"pipeline": ctx.seed}}, report=report,
                      side_tables={"dropped": ("pair", dropped)} if dropped.num_rows else {})


def register() -> None:
    from prefdata.pipeline import register_step

    register_step("clean_labels", CleanLabelsConfig, run_clean_labels)
