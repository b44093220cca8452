"""What every trainer shares: config loading (YAML + --set, unknown keys rejected), reading a store
version or file, model loading with CPU-safe defaults, LoRA, and the model card with curves."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import yaml

from prefdata.errors import ConfigError, PrefdataError

# Keys every trainer config has; each trainer's dataclass adds its own.
COMMON_HELP = {
    "dataset": "Store ref (name@vN, name@latest, name@sha:..) or a .parquet/.jsonl file.",
    "model": "Hub id or local path; default: the embedded SmolLM2-135M-Instruct.",
}


@dataclasses.dataclass
class BaseTrainConfig:
    """Fields every trainer shares; each trainer's Config adds its own (and they are all CLI/YAML keys)."""
    dataset: str = dataclasses.field(default="", metadata={"help": COMMON_HELP["dataset"]})
    model: str = dataclasses.field(default="HuggingFaceTB/SmolLM2-135M-Instruct", metadata={"help": COMMON_HELP["model"]})
    output_dir: str | None = None
    max_length: int = 512
    learning_rate: float = 5e-6
    num_train_epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 2
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = dataclasses.field(default=False, metadata={"help": "Only used on a GPU."})
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_targets: str = "all-linear"
    seed: int = 0
    trust_remote_code: bool = False


def load_config(cls, config_file: str | None, overrides: list[str], **given):
    """Dataclass `cls` from a YAML file, then `--set k=v` overrides, then explicit CLI flags."""
    raw: dict[str, Any] = {}
    if config_file:
        p = Path(config_file)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        raw = yaml.safe_load(p.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        k, v = item.split("=", 1)
        raw[k.strip()] = yaml.safe_load(v)
    raw.update({k: v for k, v in given.items() if v is not None})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{config_file or 'config'}: unknown key '{unknown[0]}' for {cls.__name__} "
                          f"(known: {', '.join(sorted(names))})")
    try:
        cfg = cls(**raw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{config_file or 'config'}: {e}") from None
    return cfg


def load_dataset_ref(ref_or_path: str, kind: str | None = "pair"):
    """(datasets.Dataset, provenance) for a store ref or a file; provenance names the exact version."""
    import datasets

    from prefdata import io, store

    p = Path(ref_or_path)
    if p.exists() and not (p / "manifest.json").is_file():
        table = io.read(str(p), kind)
        prov = {"dataset": str(p.resolve()), "dataset_sha256": None}
    else:
        v = store.resolve(ref_or_path)
        table = store.load_table(str(v.path))
        prov = {"dataset": v.ref, "dataset_sha256": v.sha}
    if table.num_rows == 0:
        raise PrefdataError(f"{ref_or_path}: no rows to train on")
    return datasets.Dataset(table), prov


def require_columns(ds, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise PrefdataError(f"dataset lacks column(s) {', '.join(missing)} needed for {what} "
                            f"(has: {', '.join(ds.column_names)})")


def check_label_prob(ds) -> None:
    import numpy as np

    p = np.asarray(ds["label_prob"], dtype=float)
    bad = np.flatnonzero(~np.isfinite(p) | (p < 0) | (p > 1))
    if bad.size:
        raise PrefdataError(f"row {bad[0] + 1}, field 'label_prob': {p[bad[0]]} is outside [0, 1]")


def load_model_and_tokenizer(name: str, *, trust_remote_code: bool = False, seq_cls: bool = False):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from prefdata.models import resolve_model

    path = resolve_model(name, trust_remote_code=trust_remote_code)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if seq_cls:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32,
                                                                   trust_remote_code=trust_remote_code)
        model.config.pad_token_id = tok.pad_token_id
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=trust_remote_code)
    return model, tok, path


def check_chat_template(tok, model_name: str) -> None:
    if not getattr(tok, "chat_template", None):
        raise PrefdataError(f"tokenizer of '{model_name}' has no chat template, but the data is conversational "
                            "(message lists); use a chat model or set a chat template")


def check_lengths(ds, tok, max_length: int, columns=("chosen", "rejected")) -> None:
    """Fail before training if no example fits in max_length (everything would be truncated away)."""
    fits = 0
    for row in ds.select(range(min(len(ds), 2000))):
        prompt = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
        if n_prompt + 1 < max_length:
            fits += 1
    if fits == 0:
        raise PrefdataError(f"every example's prompt is longer than max_length={max_length}; raise max_length")


def training_args_common(cfg) -> dict:
    """CPU-safe defaults: use_cpu without CUDA, no bf16, no gradient checkpointing; a GPU changes only the device."""
    import torch

    gpu = torch.cuda.is_available()
    return dict(output_dir=cfg.output_dir, learning_rate=cfg.learning_rate, num_train_epochs=cfg.num_train_epochs,
                max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
                gradient_accumulation_steps=cfg.gradient_accumulation_steps, logging_steps=1, save_strategy="no",
                report_to=[], seed=cfg.seed, use_cpu=not gpu, bf16=False, fp16=False,
                gradient_checkpointing=bool(cfg.gradient_checkpointing and gpu), dataloader_num_workers=0,
                disable_tqdm=not os.isatty(2))


def peft_config(cfg):
    if not cfg.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=cfg.lora_targets,
                      task_type="CAUSAL_LM" if getattr(cfg, "_task", "causal") == "causal" else "SEQ_CLS")


def default_output_dir(kind: str, prov: dict) -> str:
    from prefdata.store import home

    name = prov["dataset"].replace("@", "-").replace("/", "_")[-60:]
    return str(home() / "models" / "trained" / f"{kind}-{name}")


def plot_curves(log_history: list[dict], out: Path, keys=("loss", "rewards/accuracies", "rewards/margins")) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {k: [(h["step"], h[k]) for h in log_history if k in h and "step" in h] for k in keys}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3))
    axes = [axes] if len(series) == 1 else list(axes)
    for ax, (k, pts) in zip(axes, series.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts])
        ax.set_title(k), ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_model_card(out_dir: str, kind: str, cfg, prov: dict, log_history: list[dict], extra: dict | None = None) -> Path:
    """README.md naming the exact dataset version (ref + content hash), the config and the curves."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = plot_curves(log_history, out / "training_curves.png")
    cfg_dict = dataclasses.asdict(cfg)
    final = {k: v for k, v in (log_history[-1] if log_history else {}).items() if isinstance(v, (int, float))}
    lines = [
        "---", yaml.safe_dump({"library_name": "transformers", "tags": ["prefdata", kind],
                               "base_model": cfg.model}, sort_keys=False).strip(), "---",
        f"# {kind} model trained by prefdata", "",
        f"- dataset: `{prov['dataset']}`" + (f" (content hash `{prov['dataset_sha256']}`)" if prov.get("dataset_sha256") else ""),
        f"- base model: `{cfg.model}`", "",
        "## Config", "", "```yaml", yaml.safe_dump(cfg_dict, sort_keys=False).strip(), "```", "",
        "## Result", "", "```json", json.dumps({**final, **(extra or {})}, indent=2), "```", "",
    ]
    if png:
        lines += ["## Training curves", "", "![training curves](training_curves.png)", ""]
    (out / "README.md").write_text("\n".join(lines))
    (out / "prefdata-train.json").write_text(json.dumps({"kind": kind, "config": cfg_dict, **prov,
                                                         "result": {**final, **(extra or {})}}, indent=2, default=str))
    return out / "README.md"
