"""The model card every trainer writes: the exact dataset version (ref + content hash), the full
config, package versions, final metrics, the curves, and for LoRA how to load or merge the adapter."""

from __future__ import annotations

import json
import os
import time
from contextvars import ContextVar
from importlib import metadata
from pathlib import Path

import yaml

from trainers.plots import curve_series, plot_curves

# Where the folder being written will be once whole: a trainer writes into a temporary folder beside it
# (`trainers.common.atomic_output`), and the card records the final place, not the temporary one.
CARD_OUTPUT_DIR: ContextVar[str | None] = ContextVar("CARD_OUTPUT_DIR", default=None)
SAVE_PAUSE_ENV = "PREFDATA_TEST_SAVE_PAUSE"  # test hook: sleep after the weights, before the card


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("prefdata", "trl", "transformers", "torch", "peft"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _lora_note(cfg) -> list[str]:
    return ["## LoRA adapter", "",
            f"This directory holds a LoRA adapter (r={cfg.lora_r}, alpha={cfg.lora_alpha}) for `{cfg.model}`, "
            "not full weights. Load it with `peft.AutoPeftModelForCausalLM.from_pretrained(<this dir>)`, or merge "
            "it into the base with `PeftModel.from_pretrained(base, <this dir>).merge_and_unload()` to get a plain "
            "checkpoint (generation engines need the merged one).", ""]


def write_model_card(out_dir: str, kind: str, cfg, prov: dict, log_history: list[dict],
                     extra: dict | None = None, failure: str | None = None) -> Path:
    """README.md (+ prefdata-train.json, training_curves.png) in out_dir; returns the README path.
    With `failure`, the card records a run that stopped without saving a model, and says why."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if os.environ.get(SAVE_PAUSE_ENV) and not failure:  # the weights are written; the card is not yet
        time.sleep(float(os.environ[SAVE_PAUSE_ENV]))
    png = plot_curves(log_history, out / "training_curves.png")
    cfg_dict = cfg.model_dump(mode="json")
    if CARD_OUTPUT_DIR.get() and "output_dir" in cfg_dict:
        cfg_dict["output_dir"] = CARD_OUTPUT_DIR.get()
    # The last training row: an evaluation after training appends its own row (eval_*), reported apart.
    last = next((h for h in reversed(log_history) if not any(k.startswith("eval_") for k in h)), {})
    final = {k: v for k, v in last.items() if isinstance(v, (int, float))}
    status = {"status": "failed", "failure": failure} if failure else {"status": "succeeded"}
    result = {**status, **final, **(extra or {})}
    adapter = bool(cfg_dict.get("lora")) and kind != "reward" and not failure  # reward merges before saving
    sha = prov.get("dataset_sha256")
    front = {"library_name": "peft" if adapter else "transformers", "tags": ["prefdata", kind],
             "base_model": cfg.model, "datasets": [prov["dataset"]]}
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# {kind} model trained by prefdata" + (" (FAILED: no model saved)" if failure else ""), "",
        *([f"**Training failed: {failure}.** This run saved no model weights; any weights in this "
           "directory are from an earlier run and are not described by this card.", ""] if failure else []),
        f"- dataset: `{prov['dataset']}`" + (f" (content hash `{sha}`)" if sha else ""),
        f"- base model: `{cfg.model}`",
        f"- packages: {', '.join(f'{k} {v}' for k, v in _versions().items())}", "",
    ]
    if adapter:
        lines += _lora_note(cfg)
    lines += ["## Config", "", "```yaml", yaml.safe_dump(cfg_dict, sort_keys=False).strip(), "```", "",
              "## Result", "", "```json", json.dumps(result, indent=2, default=str), "```", ""]
    held = (extra or {}).get("eval")
    if isinstance(held, dict):
        # Pair trainers hold out pairs; the ranking trainers hold out prompts with all their candidates.
        count = f"{held['groups']} prompts" if "groups" in held else f"{held.get('pairs', '?')} pairs"
        n = held.get("groups", held.get("pairs"))
        rows = []
        for k, v in held.items():
            if k in ("pairs", "groups") or not isinstance(v, float):
                continue
            if "accuracy" in k and isinstance(n, int) and n > 0:
                lo, hi = wilson(v, n)
                rows.append(f"| {k} | {v:.4f} (90% interval {lo:.2f} – {hi:.2f}) |")
            else:
                rows.append(f"| {k} | {v:.4f} |")
        few = (f"Only {n} held-out {'prompts' if 'groups' in held else 'pairs'}: read the accuracy by its interval, "
               "not its digits." if isinstance(n, int) and n < 50 else "")
        lines += [f"## Held-out evaluation ({count})", "", "| metric | value |", "|---|---|", *rows, "",
                  *([few, ""] if few else [])]
    if png:
        lines += ["## Training curves", "", "![training curves](training_curves.png)", ""]
    (out / "README.md").write_text("\n".join(lines))
    (out / "prefdata-train.json").write_text(json.dumps(
        {"kind": kind, **status, "config": cfg_dict, **prov, "adapter": adapter, "result": result,
         "versions": _versions(), "curves": curve_series(log_history)}, indent=2, default=str))
    return out / "README.md"


def wilson(p: float, n: int, z: float = 1.6448536269514722) -> tuple[float, float]:
    """Wilson score interval (90% by default) for a proportion p observed on n trials: unlike p +- z*se
    it stays inside [0, 1] and is not zero-width at p = 0 or 1 (7 of 7 right is 0.69 - 1.00)."""
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
