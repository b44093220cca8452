"""Card content for a clean_labels version: what the vote saw, what the posterior believes, what the
policies did.

Figures (from the vote before any policy, so flipped pairs still show as doubtful):
- `posterior_hist`: histogram of label_prob (P(stored label is right)) with the flip and drop cuts;
- `length_control`: each family's vote against the log length ratio, raw and length-controlled,
  with the length-only line for comparison;
- `family_agreement`: correlation matrix of the family votes (one row per family, not per head).
Sections: counts, the posterior (each family's estimated accuracy, weight and length bias beside the
length-only baseline; the estimated noise rate with its interval), the ten most doubtful pairs, and,
when a jury voted, its jurors' biases (position consistency, first-position rate, length bias, ties,
self-preference: the figures and table of `prefdata eval judge`, from the verdicts the vote used).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from prefdata.curation.policies import PolicyConfig
from prefdata.curation.texts import duplicate_pairs


def cell(text) -> str:
    """Text made safe for one markdown table cell: pipes escaped, newlines folded."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def cuts(policy: PolicyConfig) -> dict[str, float]:
    """The label_prob values at which the policy acts, for drawing."""
    out = {}
    if policy.flip_max_prob is not None:
        out[f"flip: posterior <= {policy.flip_max_prob}"] = policy.flip_max_prob
    if policy.drop_prob_below is not None:
        out[f"drop: posterior < {policy.drop_prob_below}"] = policy.drop_prob_below
    return out


def _figures(vote, policy: PolicyConfig) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = vote.posterior.label_prob
    hist, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(p, bins=50, range=(0, 1), color="#4c72b0")
    for (label, x), colour in zip(cuts(policy).items(), ("#c44e52", "#dd8452")):
        ax.axvline(x, color=colour, ls="--", lw=1.2, label=label)
    ax.set_xlabel("label_prob = P(stored label is right | label, family votes)"), ax.set_ylabel("pairs")
    ax.set_title(f"Posterior before policies (estimated noise {vote.posterior.noise_rate:.1%})")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    hist.tight_layout()

    fams = vote.families
    length, axes = plt.subplots(1, len(fams), figsize=(3.2 * len(fams), 3), squeeze=False)
    for i, (f, ax) in enumerate(zip(fams, axes[0])):
        ax.scatter(vote.ell, vote.raw[:, i], s=3, alpha=0.35, label="raw")
        ax.scatter(vote.ell, vote.controlled[:, i], s=3, alpha=0.35, label="length-controlled")
        ax.set_title(f"{f[-28:]}\ncorr with length {vote.length_corr[i]:+.2f}", fontsize=7)
        ax.set_xlabel("log length ratio (chosen / rejected)", fontsize=7)
        ax.axhline(0, color="k", lw=0.6), ax.axvline(0, color="k", lw=0.6)
    axes[0][0].set_ylabel("family vote (standardised)"), axes[0][0].legend(fontsize=6, markerscale=3)
    length.tight_layout()

    agree, ax = plt.subplots(figsize=(4.5, 4))
    corr = np.atleast_2d(np.nan_to_num(np.corrcoef(vote.controlled.T))) if len(fams) > 1 else np.ones((1, 1))
    im = ax.imshow(corr, vmin=-1, vmax=1, cmap="RdBu_r")
    short = [n if len(n) <= 24 else "…" + n[-23:] for n in fams]
    ax.set_xticks(range(len(fams))), ax.set_yticks(range(len(fams)))
    ax.set_xticklabels(short, rotation=90, fontsize=6), ax.set_yticklabels(short, fontsize=6)
    ax.set_title("Correlation between voter families")
    agree.colorbar(im, ax=ax, fraction=0.046), agree.tight_layout()
    return {"posterior_hist": hist, "length_control": length, "family_agreement": agree}


def _n_true(t: pa.Table) -> int:  # vectorised count of flipped rows (no Python pass over 1M pairs)
    return int(pc.sum(pc.fill_null(t.column("flipped"), False).cast(pa.int64())).as_py() or 0) \
        if "flipped" in t.column_names and t.num_rows else 0


def figures_and_sections(kept: pa.Table, dropped: pa.Table, vote, votes: dict[str, np.ndarray],
                         table: pa.Table, policy: PolicyConfig | None = None):
    """({name: Figure}, [(title, markdown)]) for the card of a cleaned version."""
    policy = policy or PolicyConfig()
    summary = vote.summary()
    sections = [("Verdict", verdict_text(vote, summary, policy)),
                ("Label cleaning", _counts_markdown(kept, dropped, vote, table)),
                ("Posterior and voter families", _families_markdown(vote, votes, summary, table.num_rows)),
                ("Ten most doubtful pairs (lowest posterior, before policies)", _doubtful_markdown(vote, table))]
    return _figures(vote, policy), sections


def _counts_markdown(kept: pa.Table, dropped: pa.Table, vote, table: pa.Table) -> str:
    """What the step did to the pairs: kept, flipped, dropped (by reason), duplicates, cross-fit groups."""
    from prefdata.rewards.heads import pair_groups

    n = table.num_rows
    flipped = _n_true(kept) - _n_true(table)
    reasons = (pl.from_arrow(dropped.select(["drop_reason"])).group_by("drop_reason").len().sort("drop_reason")
               if dropped.num_rows else pl.DataFrame({"drop_reason": [], "len": []}))
    dups = duplicate_pairs(table)
    return "\n".join([
        "| | pairs |", "|---|---|", f"| input | {n} |", f"| kept | {kept.num_rows} |",
        f"| flipped (this step) | {flipped} |", f"| dropped | {dropped.num_rows} |",
        f"| posterior < 0.5 before policies | {int((vote.posterior.label_prob < 0.5).sum())} |",
        *[f"| dropped: {cell(r)} | {c} |" for r, c in reasons.iter_rows()],
        f"| exact duplicate pairs | {dups['exact']} |",
        f"| swapped duplicates (same two answers, opposite labels) | {dups['swapped']} |",
        f"| cross-fitting groups (pairs sharing a prompt or an answer) | {len(np.unique(pair_groups(table)))} |",
        "", "Every flipped pair carries `flipped = true` (flip it again to undo); dropped pairs are kept, "
        "with `drop_reason`, in the `dropped` side table named in the lineage.",
    ])


def _family_rows(vote, votes: dict[str, np.ndarray], summary: dict, n: int) -> list[str]:
    """One table row per voter family, then the length-only baseline."""
    ell = vote.ell
    longer = float(((ell > 0).sum() + 0.5 * (ell == 0).sum()) / max(n, 1))
    rows = ["| family | kind | members | estimated accuracy (90% interval) | weight | voted | ties | "
            "agrees with the label (raw) | corr with length |", "|---|---|---|---|---|---|---|---|---|"]
    for i, f in enumerate(vote.families):
        k = sum(1 for v in votes if v == f or v.startswith(f + ":"))
        fs = summary["families"][f]
        lo_a, hi_a = fs["accuracy_interval"]
        seen = np.isfinite(vote.raw[:, i])
        agree = float((vote.raw[seen, i] > 0).mean()) if seen.any() else float("nan")
        rows.append(f"| `{cell(f)}` | {fs['kind']} | {k} | {fs['accuracy']:.3f} ({lo_a:.2f}–{hi_a:.2f}) | "
                    f"{fs['weight']:+.2f} | {fs['voted']:.0%} | {fs['ties']:.0%} | {agree:.3f} | "
                    f"{vote.length_corr[i]:+.3f} |")
    rows.append(f"| length only (longer answer wins) | — | — | — | — | — | — | {longer:.3f} | +1.000 |")
    return rows


def _families_markdown(vote, votes: dict[str, np.ndarray], summary: dict, n: int) -> str:
    """The latent-class model in words, the families' table, the noise rate, and per-group fits."""
    post = vote.posterior
    lo, hi = summary.get("noise_interval", (float("nan"), float("nan")))
    noise = (f"estimated noise rate **{post.noise_rate:.1%}** (90% interval {lo:.1%} – {hi:.1%}, which holds both "
             "the fit's uncertainty and which labels are wrong)" if post.can_judge else
             f"noise rate **unknown**: the voters cannot tell (anything in {lo:.0%} – {hi:.0%} fits the votes)")
    text = [
        "The stored label and each voter family are treated as annotators of a latent \"label is right\" "
        "(a latent-class model; see `prefdata/curation/posterior.py`). Members of one family count once; a "
        "negative weight means the family is reliably wrong and is read backwards; ties and missing votes "
        "carry no evidence.",
        "", *_family_rows(vote, votes, summary, n), "",
        f"Estimated accuracy of the stored labels: **{post.alpha:.3f}**; {noise}.",
        f"Length control: {'on' if vote.length_control else 'off'} for score families (each family's vote minus "
        "its slope on the log length ratio of the two answers); verdict families are used as given.",
    ]
    if "groups" in summary:
        grows = ["| group | pairs | judged | noise rate (90% interval) | separation | family accuracies |",
                 "|---|---|---|---|---|---|"]
        for g, d in summary["groups"].items():
            fams = ", ".join(f"{cell(f)} {v['accuracy']:.2f}" for f, v in d["families"].items())
            lo_g, hi_g = d["noise_interval"]
            grows.append(f"| {cell(g)} | {d['pairs']} | {'yes' if d['can_judge'] else 'no: ' + str(d['problem'])} | "
                         f"{d['noise_rate']:.1%} ({lo_g:.1%} – {hi_g:.1%}) | {d['separation']:.2f} | {fams} |")
        text += ["", "Fitted per group (`group_by`): each group's families are weighed on that group alone, and "
                 "pairs of a group that cannot be judged are left as they are.", "", *grows]
    if "family_corr" in summary:
        text.append(f"Mean correlation between families: {summary['family_corr']:.3f}.")
    if "gold" in summary:
        text.append("Gold: " + ", ".join(f"{k} {v}" for k, v in summary["gold"].items()) + ".")
    return "\n".join(text)


def _doubtful_markdown(vote, table: pa.Table) -> str:
    """The ten pairs with the lowest posterior, their evidence and a clip of each message."""
    worst = vote.frame.sort("label_prob").head(10)
    lookup_rows = table.filter(pc.is_in(table.column("id"), value_set=pa.array(worst["id"].to_list())))
    lookup = {r["id"]: r for r in lookup_rows.select(["id", "prompt", "chosen", "rejected"]).to_pylist()}
    disputed = ["| label_prob | evidence | prompt (last turn) | chosen (as labelled) | rejected (as labelled) |",
                "|---|---|---|---|---|"]

    def clip(msgs):
        return cell(msgs[-1]["content"] if msgs else "")[:120]

    for r in worst.iter_rows(named=True):
        p = lookup[r["id"]]
        disputed.append(f"| {r['label_prob']:.3f} | {r['strength_mean']:.2f} | {clip(p['prompt'])} | "
                        f"{clip(p['chosen'])} | {clip(p['rejected'])} |")
    return "\n".join(disputed)


def verdict_text(vote, summary: dict, policy) -> str:
    """The card's first words: can these voters judge single labels, what was done, against baselines."""
    from prefdata.curation.baselines import binary_dawid_skene

    post = vote.posterior
    if not post.can_judge:
        return (f"**Cannot judge.** {summary['verdict'][0].upper()}{summary['verdict'][1:]}. The labels are kept as they were, hard: a posterior "
                "that cannot judge a pair does not soften it either. Bring stronger or different voters "
                "(a reward model, an API judge, annotators: `type: column`).")
    cut = policy.flip_max_prob if policy.flip_max_prob is not None else 0.1
    lo, hi = summary.get("noise_interval", (float("nan"), float("nan")))
    v = np.where(np.isfinite(vote.controlled), vote.controlled, 0.0)
    majority = int((np.sign(v).sum(1) < 0).sum())
    ds = int((binary_dawid_skene(vote.controlled) <= np.log(cut / (1 - cut))).sum())
    ours = int((post.label_prob <= cut).sum())
    return (f"**The voters can judge single labels** (they separate right from wrong labels with AUC "
            f"{post.separation:.2f} by the model's own account). Estimated noise rate {post.noise_rate:.1%} "
            f"(90% interval {lo:.1%} – {hi:.1%}).\n\n"
            "| method, on the same votes | labels it would flip |\n|---|---|\n"
            f"| this posterior, at P(label right) <= {cut} | {ours} |\n"
            f"| majority vote of the families against the label | {majority} |\n"
            f"| binary Dawid-Skene at the same cut | {ds} |\n\n"
            "Majority vote ignores that some families are reliably wrong; `prefdata eval gold` and `eval noise` "
            "measure all three against known truth.")


def jury_bias(juries: list, table: pa.Table, source: str | None = None) -> tuple[list[dict], list[tuple[str, str]]]:
    """Per jury voter: `evals.judge`'s report on the verdicts it voted with (x = the stored chosen, so
    accuracy is agreement with the labels before any policy), and its card section."""
    from prefdata.evals.judge import card_section, evaluate, generator_of

    generator = generator_of(source) if source else None  # self-preference needs the answers' writer
    reports, sections = [], []
    for i, verdicts in enumerate(juries):
        r = evaluate(verdicts, table, generator)
        title, text = card_section(r)
        reports.append(r)
        sections.append((title if len(juries) == 1 else f"{title} (jury voter {i + 1})", text))
    return reports, sections
