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


def plot_curves(log_history: list[dict], out: Path, keys=CURVE_KEYS) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")  # headless: training runs on servers
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    series = curve_series(log_history, keys)
    if not series:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(3.6 * len(series), 3), squeeze=False)
    for ax, (k, pts) in zip(axes[0], series.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 30 else None)
        ax.set_title(k)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)
