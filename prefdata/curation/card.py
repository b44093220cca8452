"""Card content for a clean_labels version: what the vote saw and what the policies did.

Figures (drawn from the vote before any policy, so flipped pairs still show as negative):
- `strength_hist`: histogram of strength with the flip and drop cuts marked;
- `strength_ucurve`: voter std against strength rank (Secrets of RLHF II's U-curve);
- `voter_agreement`: correlation matrix of the standardised votes.
Sections: counts (input, kept, flipped, dropped by reason), voter agreement, the ten most disputed pairs.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from prefdata.curation.policies import PolicyConfig


def cuts(strength: np.ndarray, policy: PolicyConfig) -> dict[str, float]:
    """The strength values at which the policy acts, for drawing (same 'lower' quantile as apply)."""
    out = {}
    if policy.flip_bottom_q > 0:
        out[f"flip: bottom {policy.flip_bottom_q:.0%} (if < 0)"] = min(
            float(np.quantile(strength, policy.flip_bottom_q, method="lower")), 0.0)
    if policy.flip_below is not None:
        out[f"flip: < -{policy.flip_below}"] = -policy.flip_below
    if policy.drop_bottom_q > 0:
        out[f"drop: bottom {policy.drop_bottom_q:.0%}"] = float(np.quantile(strength, policy.drop_bottom_q, method="lower"))
    if policy.drop_abs_below is not None:
        out[f"drop: |s| < {policy.drop_abs_below}"] = policy.drop_abs_below
    return out


def _figures(s: np.ndarray, sd: np.ndarray, names: list[str], corr: np.ndarray, policy: PolicyConfig) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(s, bins=60, color="#4c72b0")
    for (label, x), colour in zip(cuts(s, policy).items(), ("#c44e52", "#dd8452", "#55a868", "#8172b2")):
        ax.axvline(x, color=colour, ls="--", lw=1.2, label=label)
        if label.startswith("drop: |s|"):
            ax.axvline(-x, color=colour, ls="--", lw=1.2)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("strength_mean (standardised votes, as labelled)"), ax.set_ylabel("pairs")
    ax.set_title(f"Preference strength before policies ({(s < 0).mean():.1%} negative)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    hist.tight_layout()

    # U-curve: sort by strength; the rolling mean of std shows the shape through the scatter.
    order = np.argsort(s, kind="stable")
    ranks = np.arange(len(s)) / max(len(s) - 1, 1)
    ucurve, ax = plt.subplots(figsize=(6, 3.5))
    ax.scatter(ranks, sd[order], s=4, alpha=0.4)
    band = np.clip((ranks * 20).astype(int), 0, 19)  # (n,) 5% band of each sorted pair
    sums = np.bincount(band, weights=sd[order], minlength=20)
    counts = np.bincount(band, minlength=20)
    means = np.divide(sums, counts, out=np.full(20, np.nan), where=counts > 0)
    ax.plot((np.arange(20) + 0.5) / 20, means, color="k", lw=1.5, label="mean per 5% band")
    ax.set_xlabel("strength rank (0 = weakest)"), ax.set_ylabel("voter std"), ax.set_title("Disagreement vs strength")
    ax.legend(), ucurve.tight_layout()

    agree, ax = plt.subplots(figsize=(4.5, 4))
    im = ax.imshow(corr, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names))), ax.set_yticks(range(len(names)))
    short = [n if len(n) <= 24 else "…" + n[-23:] for n in names]
    ax.set_xticklabels(short, rotation=90, fontsize=5), ax.set_yticklabels(short, fontsize=5)
    ax.set_title("Vote correlation between voters")
    agree.colorbar(im, ax=ax, fraction=0.046), agree.tight_layout()
    return {"strength_hist": hist, "strength_ucurve": ucurve, "voter_agreement": agree}


def figures_and_sections(kept: pa.Table, dropped: pa.Table, frame: pl.DataFrame, votes: dict[str, np.ndarray],
                         table: pa.Table, policy: PolicyConfig | None = None):
    """({name: Figure}, [(title, markdown)]) for the card of a cleaned version."""
    policy = policy or PolicyConfig()
    s = frame["strength_mean"].to_numpy()
    sd = frame["strength_std"].to_numpy()
    names = list(votes)
    mat = np.stack([votes[n] for n in names], 1)  # (n, m) raw votes; correlation is scale-free
    corr = np.corrcoef(mat.T) if len(names) > 1 else np.ones((1, 1))
    corr = np.nan_to_num(np.atleast_2d(corr), nan=0.0)  # a constant voter has no correlation
    off = corr[~np.eye(len(names), dtype=bool)] if len(names) > 1 else np.array([1.0])
    sign_agree = float((np.sign(mat) == np.sign(s)[:, None]).mean())

    n = table.num_rows

    def n_true(t: pa.Table) -> int:  # vectorised count of flipped rows (no Python pass over 1M pairs)
        return int(pc.sum(pc.fill_null(t.column("flipped"), False).cast(pa.int64())).as_py() or 0) \
            if "flipped" in t.column_names and t.num_rows else 0

    flipped = n_true(kept) - n_true(table)
    reasons = (pl.from_arrow(dropped.select(["drop_reason"])).group_by("drop_reason").len().sort("drop_reason")
               if dropped.num_rows else pl.DataFrame({"drop_reason": [], "len": []}))
    counts = "\n".join([
        "| | pairs |", "|---|---|", f"| input | {n} |", f"| kept | {kept.num_rows} |",
        f"| flipped (this step) | {flipped} |", f"| dropped | {dropped.num_rows} |",
        f"| negative strength before policies | {int((s < 0).sum())} ({(s < 0).mean():.1%}) |",
        *[f"| dropped: {r} | {c} |" for r, c in reasons.iter_rows()],
        "", "Every flipped pair carries `flipped = true` (flip it again to undo); dropped pairs are kept, "
        "with `drop_reason`, in the `dropped` side table named in the lineage.",
    ])
    agreement = (f"{len(names)} voters: {', '.join(f'`{v}`' for v in names)}.\n\n"
                 f"Mean pairwise correlation of their votes: {off.mean():.3f} (min {off.min():.3f}). "
                 f"Share of individual votes that agree in sign with the pair's mean strength: {sign_agree:.1%}.")

    worst = frame.sort("strength_mean").head(10)
    chosen_rows = table.filter(pc.is_in(table.column("id"), value_set=pa.array(worst["id"].to_list())))
    lookup = {r["id"]: r for r in chosen_rows.select(["id", "prompt", "chosen", "rejected"]).to_pylist()}
    rows = ["| strength | std | prompt (last turn) | chosen (as labelled) | rejected (as labelled) |",
            "|---|---|---|---|---|"]

    def clip(msgs):
        text = msgs[-1]["content"] if msgs else ""
        return text.replace("|", "\\|").replace("\n", " ")[:120]

    for r in worst.iter_rows(named=True):
        p = lookup[r["id"]]
        rows.append(f"| {r['strength_mean']:.2f} | {r['strength_std']:.2f} | {clip(p['prompt'])} | "
                    f"{clip(p['chosen'])} | {clip(p['rejected'])} |")
    sections = [("Label cleaning", counts), ("Voter agreement", agreement),
                ("Ten most disputed pairs (lowest strength, before policies)", "\n".join(rows))]
    return _figures(s, sd, names, corr, policy), sections
