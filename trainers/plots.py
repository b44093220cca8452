"""Training curves from a HF Trainer's `state.log_history`, one panel per logged metric."""

from __future__ import annotations

from pathlib import Path

# Per-step keys worth a panel, in display order; a trainer shows only those it logs.
CURVE_KEYS = ("loss", "rewards/accuracies", "rewards/margins", "accuracy", "margin", "kl", "rank_accuracy",
              "sft_nll", "mean_token_accuracy", "eval_loss", "eval_accuracy")


def curve_series(log_history: list[dict], keys=CURVE_KEYS) -> dict[str, list[tuple[int, float]]]:
    """{key: [(step, value), ...]} for each key logged at least once (the final summary row, which
    carries `train_loss` rather than `loss`, is skipped naturally)."""
    out = {k: [(h["step"], float(h[k])) for h in log_history if k in h and "step" in h] for k in keys}
    return {k: v for k, v in out.items() if v}


def draw_curves(log_history: list[dict], keys=CURVE_KEYS):
    """The figure `plot_curves` saves (None when nothing was logged); the caller closes it."""
    import matplotlib

    matplotlib.use("Agg")  # headless: training runs on servers
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    series = curve_series(log_history, keys)
    if not series:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(3.6 * len(series), 3), squeeze=False)
    for ax, (k, pts) in zip(axes[0], series.items()):
        steps = [p[0] for p in pts]
        ax.plot(steps, [p[1] for p in pts], marker="." if len(pts) < 30 else None)
        ax.set_title(k)
        ax.set_xlabel("step")
        if len(set(steps)) == 1:
            # One step (an eval after a short run): MaxNLocator finds no two whole numbers in matplotlib's
            # ±5% margin and falls back to crowded fractional ticks; one tick at the step says it all.
            ax.set_xlim(steps[0] - 1, steps[0] + 1)
            ax.set_xticks([steps[0]])
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_curves(log_history: list[dict], out: Path, keys=CURVE_KEYS) -> Path | None:
    fig = draw_curves(log_history, keys)
    if fig is None:
        return None
    import matplotlib.pyplot as plt  # after draw_curves chose the headless backend

    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)
