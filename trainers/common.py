"""What every trainer shares: the base config (YAML + --set, unknown keys rejected), reading a store
version or a file with its provenance, model loading with CPU-safe defaults, LoRA, and the checks
that must fail before a single training step runs.

The card and the curves live in `trainers.card` and `trainers.plots`; they are re-exported here.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import math
import os
import re
import shutil
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from prefdata.config import RUN_ONLY, apply_overrides, fmt_validation, read_yaml
from prefdata.errors import ConfigError, PrefdataError
from prefdata.models import DEFAULT_MODEL, model_fingerprint  # noqa: F401  (the one model fingerprint)
from trainers.card import write_model_card  # noqa: F401  (re-export)
from trainers.plots import plot_curves  # noqa: F401  (re-export)

TRACKERS = ("tensorboard", "trackio", "wandb")  # report_to values; each needs its own package installed


class BaseTrainConfig(BaseModel):
    """Fields every trainer shares. Each field is a YAML key and a `--set key=value` override."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_assignment=False)

    dataset: str = Field("", description="Store ref (name@vN, name@latest, name@sha:..) or a .parquet/.jsonl file.")
    model: str = Field(DEFAULT_MODEL, description="Hub id or local path; the default falls back to the embedded "
                                                  "SmolLM2-135M-Instruct checkpoint.")
    output_dir: str | None = Field(None, description="A folder for the model, card and curves; default: a new "
                                                     "model version <kind>-<dataset>@vN under "
                                                     "$PREFDATA_HOME/models/trained/.")
    max_length: int = Field(512, ge=1, le=131072, description="Tokens per prompt+completion; longer sequences "
                                                               "are truncated (reward: dropped). In [1, 131072].")
    learning_rate: float = Field(5e-6, gt=0, le=1, description="AdamW step size, in (0, 1]. DPO papers use "
                                                               "5e-7..5e-6 for full fine-tuning; LoRA takes ~10x more.")
    num_train_epochs: float = Field(1.0, gt=0, description="Passes over the data (> 0); ignored when max_steps > 0.")
    max_steps: int = Field(-1, ge=-1, description="Optimizer steps; -1 = run num_train_epochs.")
    batch_size: int = Field(2, ge=1, description="Examples (pairs) per device per step, >= 1.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step, >= 1.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward; only applied on "
                                                            "a GPU (on CPU it costs time and saves little).")
    bf16: bool = Field(False, description="bfloat16 mixed precision; only applied on a GPU.")
    use_cpu: bool | None = Field(None, description="Force CPU; default: CPU exactly when no CUDA device exists.")
    lora: bool = Field(False, description="Train LoRA adapters (Hu et al. 2021) instead of all weights.")
    lora_r: int = Field(8, ge=1, le=1024, description="LoRA rank r, in [1, 1024].")
    lora_alpha: int = Field(16, ge=1, description="LoRA scale alpha (update scaled by alpha/r), >= 1.")
    lora_targets: str | list[str] = Field("all-linear", description="Modules that get adapters: 'all-linear' or "
                                                                    "a list of names such as [q_proj, v_proj].")
    logging_steps: int = Field(1, ge=1, description="Log loss/metrics every n steps (the curves' resolution).")
    seed: int = Field(0, description="Seed for init of new heads/adapters and data order.")
    trust_remote_code: bool = Field(False, description="Allow model code from the checkpoint (hub models only).")
    # RUN_ONLY: where a run is logged does not change what it trains; lineage records it, a step's
    # fingerprint skips it (prefdata.config.fingerprint_dump).
    report_to: str | list[str] = Field("none", json_schema_extra=RUN_ONLY,
                                       description="Experiment trackers that get the curves and the run config "
                                                   f"(the dataset ref is the run name): none, or one or a list of "
                                                   f"{', '.join(TRACKERS)}. The tracker's own env vars "
                                                   "(WANDB_PROJECT, TRACKIO_PROJECT...) apply; logs go under "
                                                   "output_dir/runs for tensorboard.")

    @field_validator("report_to")
    @classmethod
    def _known_trackers(cls, v):
        names = [v] if isinstance(v, str) else list(v)
        bad = [n for n in names if n not in ("none", *TRACKERS)]
        if bad:
            raise ValueError(f"unknown tracker {', '.join(map(repr, bad))} (known: none, {', '.join(TRACKERS)})")
        if "none" in names and len(names) > 1:
            raise ValueError("'none' cannot be combined with a tracker")
        return v


def load_config(cls, config_file: str | None, overrides: list[str] | None = None, **given):
    """`cls` from a YAML file, then `--set k=v` overrides (dotted keys reach nested fields, as in
    pipelines: `--set lora_config.r=16`), then explicit CLI flags (later wins). Unknown keys and bad
    values raise one ConfigError line naming the file and the key (`prefdata.config`, the one loader)."""
    source = str(config_file) if config_file else "--set"
    raw: dict[str, Any] = {}
    if config_file:
        p = Path(config_file)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        raw = read_yaml(p, "config file") or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: top level must be a mapping of {cls.__name__} keys")
    apply_overrides(raw, list(overrides or []), source)
    raw.update({k: v for k, v in given.items() if v is not None})
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(fmt_validation(source, "", e, known=list(cls.model_fields))) from None


def config_help(cls) -> str:
    """One line per field for `--help`: the same text the YAML keys are documented with."""
    return "\n".join(f"{n} ({f.default!r}): {f.description or ''}" for n, f in cls.model_fields.items())


# ----------------------------------------------------------------------------- data


def file_sha256(path: Path) -> str:
    from prefdata.store.core import sha256_file  # the one file hasher

    return sha256_file(path)


def load_dataset_ref(ref_or_path: str, kind: str | None = None):
    """(datasets.Dataset, provenance) for a store ref or a .parquet/.jsonl/... file.

    Provenance names the exact data: a store version's `name@vN` and content hash, or a file's
    absolute path and sha256 (so cards and the reference log-prob cache key on content either way).
    `kind` validates a file as that record kind; None infers it (pairs, unpaired rows, prompts...).
    """
    import datasets

    if not ref_or_path:
        raise PrefdataError("no dataset given: pass --dataset REF (a store ref such as name@v1, or a file)")
    p = Path(ref_or_path)
    if p.is_file():
        from prefdata import io

        ds = datasets.Dataset(io.read(str(p), kind))
        prov = {"dataset": str(p.resolve()), "dataset_sha256": file_sha256(p)}
    else:
        from prefdata import store

        v = store.resolve(ref_or_path)
        ds = store.load(v.ref)
        prov = {"dataset": v.ref, "dataset_sha256": v.sha}
    if len(ds) == 0:
        raise PrefdataError(f"{ref_or_path}: no rows to train on")
    check_row_numbers(ds, ref_or_path if p.is_file() else prov["dataset"])
    return ds, prov


def require_columns(ds, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise PrefdataError(f"dataset lacks column(s) {', '.join(missing)} needed for {what} "
                            f"(has: {', '.join(ds.column_names)})")


# Per-row numbers a loss reads, with their bounds. A store version committed before commit-time
# validation, or written by another tool, can hold NaN here; one NaN margin turns every weight NaN.
ROW_NUMBERS: dict[str, tuple[float | None, float | None]] = {
    "label_prob": (0.0, 1.0), "margin": (None, None), "chosen_score": (None, None),
    "rejected_score": (None, None), "weight": (0.0, None),
}
FLOAT32_MAX = 3.4028234663852886e38  # the loss runs in float32: a finite 1e300 margin becomes inf there


def check_row_numbers(ds, where: str) -> None:
    """Refuse, before any step, a per-row number that is not finite, overflows float32 or is out of
    bounds, naming the first such row (1-based) and field. Nulls are fine: they mean the default
    (a null label_prob is a tie, see `resolve_ties`)."""
    import numpy as np

    from prefdata.errors import DataError

    for col, (lo, hi) in ROW_NUMBERS.items():
        if col not in ds.column_names:
            continue
        values = ds[col]
        for i, v in enumerate(values):  # types first: a string margin must not pass as NaN
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise DataError(f"must be a number, got {type(v).__name__}", file=where, row=i + 1, field=col)
        x = np.asarray([np.nan if v is None else float(v) for v in values], dtype=float)
        known = np.asarray([v is not None for v in values], dtype=bool)
        with np.errstate(invalid="ignore"):
            bad = known & (~np.isfinite(x) | (np.abs(x) > FLOAT32_MAX)
                           | (x < lo if lo is not None else False) | (x > hi if hi is not None else False))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            v = x[i]
            if not np.isfinite(v):
                why = f"{v} is not a finite number"
            elif abs(v) > FLOAT32_MAX:
                why = f"{v:g} overflows float32, the precision the loss runs in"
            else:
                why = f"{v} is outside [{lo}, {'inf' if hi is None else hi}]"
            n = int(bad.sum())
            raise DataError(f"{why} ({n} such row{'s' if n > 1 else ''}); fix or drop it before training",
                            file=where, row=i + 1, field=col)


TIE_PROB = 0.5


def resolve_ties(ds, soft: bool, what: str):
    """(dataset, card note or None). A tie is a pair whose label_prob is 0.5 or null: a judge that
    could not decide (RLCD-Rescore stores 0.5; versions written before that fix store null). Null
    never means 1.0 here: that would train an undecided pair as a confident label.
    - soft losses read label_prob, so a tie stays as 0.5 (its gradient at the reference is zero);
    - hard losses cannot express "undecided", so ties are dropped and counted in the card."""
    if "label_prob" not in ds.column_names:
        return ds, None
    probs = ds["label_prob"]
    tie = [p is None or p == TIE_PROB for p in probs]
    n_tie, n_null = sum(tie), sum(p is None for p in probs)
    if not n_tie:
        return ds, None
    if soft:
        if n_null:
            print(f"warning: {n_null} pair(s) with null label_prob read as ties (label_prob 0.5)", file=sys.stderr)
            ds = ds.map(lambda r: {"label_prob": TIE_PROB if r["label_prob"] is None else float(r["label_prob"])})
        return ds, {"ties": n_tie, "null_label_prob": n_null, "ties_handling": "kept with label_prob 0.5 (soft loss)"}
    if n_tie == len(ds):
        raise PrefdataError(f"every pair is a tie (label_prob 0.5 or null), and {what} is a hard-label loss that "
                            "drops ties: nothing to train on; use a soft-label loss")
    print(f"warning: {what} drops {n_tie} tied pair(s) (label_prob 0.5 or null); a hard loss cannot "
          "express an undecided pair", file=sys.stderr)
    ds = ds.select([i for i, t in enumerate(tie) if not t])
    return ds, {"ties": n_tie, "null_label_prob": n_null, "ties_handling": f"dropped ({what} is a hard loss)"}


def check_label_prob(ds) -> None:
    """label_prob must be a probability in every row (null = a tie); kept for callers of the old name."""
    check_row_numbers(ds.select_columns(["label_prob"]), "dataset")


def is_conversational(ds, column: str = "prompt") -> bool:
    first = ds[0][column]
    return isinstance(first, list) and bool(first) and isinstance(first[0], dict)


def check_chat_template(tok, model_name: str) -> None:
    if not getattr(tok, "chat_template", None):
        raise PrefdataError(f"tokenizer of '{model_name}' has no chat template, but the data is conversational "
                            "(message lists); use a chat model or add a chat template to its tokenizer")


def check_lengths(ds, tok, max_length: int, completions=("chosen", "rejected"), sample: int = 2000) -> None:
    """Fail before training when no example fits in max_length: TRL would silently filter or truncate
    everything away. An example's length is its prompt plus its longest completion, as rendered by
    the chat template. Warns with the share that does not fit."""
    n = min(len(ds), sample)
    over = 0
    for row in ds.select(range(n)):
        longest = 0
        for col in completions:
            if col not in row or row[col] is None:
                continue
            msgs = row["prompt"] + row[col] if isinstance(row["prompt"], list) else None
            text = tok.apply_chat_template(msgs, tokenize=False) if msgs else f"{row['prompt']}{row[col]}"
            longest = max(longest, len(tok(text, add_special_tokens=False)["input_ids"]))
        over += longest > max_length
    if over == n:
        raise PrefdataError(f"every example is longer than max_length={max_length} tokens (checked {n}); "
                            "raise max_length or shorten the data")
    if over:
        print(f"warning: {over}/{n} examples exceed max_length={max_length} and will be truncated or dropped",
              file=sys.stderr)


# ----------------------------------------------------------------------------- model


def quiet_hf_bars() -> None:
    """Off a terminal, turn off the tqdm bars of transformers, datasets and the hub (loading weights,
    tokenizing, writing shards): redrawn with carriage returns, each becomes one long garbled line in a
    log. prefdata's own progress lines report the training instead. On a terminal they stay."""
    if sys.stderr.isatty():
        return
    import datasets
    import huggingface_hub.utils
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    huggingface_hub.utils.disable_progress_bars()


class _ExpectedHeadReport:
    """Drops transformers' load report when all it says is what loading a causal LM as a reward model
    always does: a new score head (score.* MISSING) and an unused LM head (lm_head.* UNEXPECTED). Any
    other row (a missing layer, a mismatched shape) keeps the whole report."""

    ROW = re.compile(r"^(\S+)\s*\|\s*(MISSING|UNEXPECTED|MISMATCH)\b", re.MULTILINE)

    def filter(self, record) -> bool:
        msg = record.getMessage()
        if "LOAD REPORT" not in msg:
            return True
        rows = self.ROW.findall(msg)
        expected = all((k.startswith("score.") and st == "MISSING")
                       or (k.startswith("lm_head.") and st == "UNEXPECTED") for k, st in rows)
        return not (rows and expected)


@contextmanager
def _expected_head_quiet():
    import logging

    logger, quiet = logging.getLogger("transformers.modeling_utils"), _ExpectedHeadReport()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def load_model_and_tokenizer(name: str, *, trust_remote_code: bool = False, seq_cls: bool = False):
    """(model, tokenizer, local dir) in float32: CPU training in half precision is slow and lossy.
    Every trainer loads its model here first, so this is also where HF's bars go quiet in logs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from prefdata.models import checkpoint_errors, resolve_model

    quiet_hf_bars()
    path = resolve_model(name, trust_remote_code=trust_remote_code)
    with checkpoint_errors(name):  # an untrusted pickle or remote code: one line naming the checkpoint
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        if seq_cls:
            with _expected_head_quiet():
                model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32,
                                                                           trust_remote_code=trust_remote_code)
            model.config.pad_token_id = tok.pad_token_id  # the classifier pools the last non-pad token
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                         trust_remote_code=trust_remote_code)
    return model, tok, path


def report_to(cfg) -> list[str]:
    """The trackers as TrainingArguments takes them; a missing package is one clear error before training."""
    import importlib.util

    names = [cfg.report_to] if isinstance(cfg.report_to, str) else list(cfg.report_to)
    names = [n for n in names if n != "none"]
    package = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb"}
    missing = [n for n in names if importlib.util.find_spec(package[n]) is None]
    if missing:
        raise ConfigError(f"report_to: {', '.join(missing)} is not installed; "
                          f"pip install {' '.join(package[n] for n in missing)} (or report_to: none)")
    return names


def run_name(ref_or_path: str) -> str:
    """The run's name in a tracker: the exact dataset version (name@vN) or the file, so runs on different
    data never share a name. A ref that does not resolve is kept as given (loading it fails clearly)."""
    if not ref_or_path or Path(ref_or_path).is_file():
        return str(Path(ref_or_path).resolve()) if ref_or_path else "prefdata"
    from prefdata import store

    try:
        return store.resolve(ref_or_path).ref
    except PrefdataError:
        return ref_or_path


def training_args_common(cfg) -> dict:
    """TrainingArguments shared by every trainer. CPU-safe: use_cpu without CUDA, no bf16 and no
    gradient checkpointing there; on a GPU only the device changes (plus the two opt-ins).
    HF's own progress output (tqdm, or raw `{'loss': ...}` dicts) is off: `guard_finite` puts
    prefdata's progress display (`TrainProgress`) in its place."""
    import torch

    gpu = torch.cuda.is_available()
    use_cpu = (not gpu) if cfg.use_cpu is None else (cfg.use_cpu or not gpu)
    on_gpu = gpu and not use_cpu
    return dict(output_dir=cfg.output_dir, learning_rate=cfg.learning_rate, num_train_epochs=cfg.num_train_epochs,
                max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
                gradient_accumulation_steps=cfg.gradient_accumulation_steps, logging_steps=cfg.logging_steps,
                # The first step always logs, so a run shorter than logging_steps still has a loss.
                logging_first_step=True,
                save_strategy="no", report_to=report_to(cfg), run_name=run_name(cfg.dataset), seed=cfg.seed,
                use_cpu=use_cpu, bf16=bool(cfg.bf16 and on_gpu),
                fp16=False, gradient_checkpointing=bool(cfg.gradient_checkpointing and on_gpu),
                dataloader_num_workers=0, disable_tqdm=True,
                # HF's filter logs a NaN step as the running mean, so a NaN run reads as train_loss 0.0.
                logging_nan_inf_filter=False)


def peft_config(cfg, task: str = "CAUSAL_LM"):
    if not cfg.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=cfg.lora_targets,
                      task_type=task)


def default_output_dir(kind: str, prov: dict) -> str:
    from prefdata.store import home

    name = prov["dataset"].replace("@", "-").replace("/", "_")[-60:]
    return str(home() / "models" / "trained" / f"{kind}-{name}")


# ----------------------------------------------------------------------------- progress

# Logged metric -> short name shown beside the step count. TRL logs DPO/ORPO/KTO implicit-reward
# accuracy and margin as rewards/*, the reward trainer as accuracy/margin.
PROGRESS_METRICS = {"loss": "loss", "rewards/accuracies": "acc", "accuracy": "acc",
                    "rewards/margins": "margin", "margin": "margin"}


def progress_note(logs: dict) -> str | None:
    """'loss 0.6931, acc 0.500, margin 0.0123' from a training log, or None for other logs (eval, summary)."""
    if "loss" not in logs:
        return None
    parts, seen = [], set()
    for key, short in PROGRESS_METRICS.items():
        v = logs.get(key)
        if isinstance(v, (int, float)) and short not in seen:
            seen.add(short)
            parts.append(f"{short} {v:.4f}" if short == "loss" else f"{short} {v:.3f}" if short == "acc"
                         else f"{short} {v:.4g}")
    return ", ".join(parts)


def make_progress_callback(label: str):
    """A TrainerCallback that drives `prefdata.progress`: a rich bar with loss, reward accuracy and margin
    on a terminal, one plain line every N seconds off one (steps done, rate, ETA and the same numbers)."""
    from transformers import TrainerCallback

    from prefdata.progress import progress_bar

    class TrainProgress(TrainerCallback):
        def __init__(self):
            self.bar, self.advance, self.done, self.note = None, None, 0, None

        def on_train_begin(self, args, state, control, **_):
            self.close()
            self.done, self.note = 0, None
            # first_note: the first loss is printed even off a terminal, so a run shorter than the
            # line interval (30 s) still shows its loss at step 1 and at the end.
            self.bar = progress_bar(label, state.max_steps, unit="steps", first_note=True)
            self.advance = self.bar.__enter__()

        def on_step_end(self, args, state, control, **_):
            # A step that logs advances in on_log, which comes next, so its line carries its own loss.
            if self.advance is not None and not control.should_log:
                self.advance(state.global_step - self.done, self.note)
                self.done = state.global_step

        def on_log(self, args, state, control, logs=None, **_):
            note = progress_note(logs or {})
            if self.advance is None or note is None:
                return
            self.note = note
            self.advance(state.global_step - self.done, note)
            self.done = state.global_step

        def on_train_end(self, args, state, control, **_):
            self.close()

        def close(self):
            if self.bar is not None:
                bar, self.bar, self.advance = self.bar, None, None
                bar.__exit__(None, None, None)

    return TrainProgress()


def watch_progress(trainer):
    """Replace HF's printing of raw log dicts (PrinterCallback) and its tqdm bar with `TrainProgress`;
    the bar is closed even when train() raises."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    cb = make_progress_callback(f"training on {trainer.args.run_name}")
    trainer.add_callback(cb)
    train = trainer.train

    def train_and_close(*args, **kwargs):
        try:
            return train(*args, **kwargs)
        finally:
            cb.close()

    trainer.train = train_and_close
    return cb


# ----------------------------------------------------------------------------- non-finite guard


class TrainingFailed(PrefdataError):
    """Training stopped on a non-finite loss or gradient; the card says so and no model was saved."""


def guard_finite(trainer):
    """Stop `trainer` at the first non-finite loss or gradient. Returns the guard; `raise_if_failed`
    after `train()` turns a stop into a failed card and a one-line error. Checks the loss each
    micro-step and the gradients before each optimizer step, so weights are never updated with NaN.

    Every trainer calls this right before `train()`, so it also puts prefdata's progress display in
    place of HF's raw log printing (`watch_progress`)."""
    import torch
    from transformers import TrainerCallback

    class Guard(TrainerCallback):
        failure: str | None = None

        def fail(self, why: str, control) -> None:
            if self.failure is None:
                self.failure = why
            control.should_training_stop = True

        def on_pre_optimizer_step(self, args, state, control, model=None, **_):
            params = [(n, p.grad) for n, p in (model.named_parameters() if model is not None else [])
                      if p.grad is not None]
            by_device: dict = {}
            for _, g in params:
                by_device.setdefault(g.device, []).append(g)
            # One norm kernel and one sync per device, not one per tensor; NaN/inf anywhere shows in a norm.
            if all(bool(torch.isfinite(torch.stack(torch._foreach_norm(gs))).all()) for gs in by_device.values()):
                return
            name = next((n for n, g in params if not bool(torch.isfinite(g).all())), None)
            where = f"in {name}" if name else "its norm overflows float32"
            self.fail(f"non-finite gradient ({where}) at step {state.global_step + 1}", control)
            if model is not None:
                for p in model.parameters():
                    p.grad = None  # the optimizer step that follows then leaves the weights as they were

        def on_log(self, args, state, control, logs=None, **_):
            for k in ("loss", "grad_norm"):
                v = (logs or {}).get(k)
                if isinstance(v, float) and not math.isfinite(v):
                    self.fail(f"non-finite {k} ({v}) at step {state.global_step}", control)

    guard = Guard()
    trainer.add_callback(guard)
    step = trainer.training_step

    def checked_step(*args, **kwargs):
        loss = step(*args, **kwargs)
        if guard.failure is None and not bool(torch.isfinite(loss.detach()).all()):
            guard.fail(f"non-finite loss ({loss.detach().float().mean().item()}) at step "
                       f"{trainer.state.global_step + 1}", trainer.control)
        return loss

    trainer.training_step = checked_step
    from transformers import Trainer

    if isinstance(trainer, Trainer):  # not a stand-in built to test the guard alone
        watch_progress(trainer)
    return guard


def raise_if_failed(guard, trainer, cfg, kind: str, prov: dict, extra: dict | None = None) -> None:
    """After a guarded `train()`: on failure write a card that says so (no weights) and exit 1."""
    if guard.failure is None:
        return
    card = write_model_card(cfg.output_dir, kind, cfg, prov, trainer.state.log_history, extra,
                            failure=guard.failure)
    raise TrainingFailed(f"training failed: {guard.failure}; no model saved (card: {card})")


def save_outputs(trainer, tok, cfg, kind: str, prov: dict, extra: dict | None = None) -> Path:
    """Model (or LoRA adapter) + tokenizer + card + curves into cfg.output_dir; returns the card path."""
    trainer.save_model(cfg.output_dir)
    tok.save_pretrained(cfg.output_dir)
    return write_model_card(cfg.output_dir, kind, cfg, prov, trainer.state.log_history, extra)


# ----------------------------------------------------------------------------- atomic output, versions

# What a trainer writes into its folder. A folder holding only these (and a prefdata-train.json) is a
# model folder prefdata may replace whole; anything else in it is the user's, and is never deleted.
_MODEL_FILES = ("README.md", "prefdata-train.json", "training_curves.png", "*.safetensors", "*.bin", "*.json",
                "*.jinja", "merges.txt", "vocab.txt", "*.model", "*.tiktoken", "runs")
_SIDE = re.compile(r"^\.(.+)\.(tmp|old)-(\d+)-[0-9a-f]+$")  # .<target>.tmp-<pid>-<hex>, .<target>.old-<pid>-<hex>


def atomic_output(kind: str):
    """Make a trainer's `train(cfg)` write its model whole or not at all.

    - `cfg.output_dir` given: the run writes into `.<dir>.tmp-<pid>-<hex>` beside it (weights, then the
      card) and renames it onto `output_dir` only when whole: an absent or empty folder, or a model folder
      an earlier run left (swapped in one `renameat2(RENAME_EXCHANGE)` where the kernel has it). A run that
      fails or is killed leaves the earlier model as it was. A folder that holds other files is written in
      place, as before, with a warning: prefdata never deletes what it did not write.
    - no `output_dir`: the run becomes a new version, `<kind>-<dataset>@vN` (or `name@vN`), in
      `$PREFDATA_HOME/models/trained/<name>/<run id>/` (see `prefdata.artifacts`); reruns add versions.
    Returns the card path in its final place; `cfg.output_dir` is the final folder afterwards."""

    def wrap(fn):
        @functools.wraps(fn)
        def train(cfg, *, name: str | None = None) -> Path:
            if cfg.output_dir:
                if name:
                    raise ConfigError("--name names a model version in the store; it cannot go with --output-dir")
                return train_into_folder(fn, cfg, Path(cfg.output_dir))
            return train_new_version(kind, fn, cfg, name)

        return train

    return wrap


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def replaceable(folder: Path) -> bool:
    """An empty folder, or one holding only what a trainer writes (with its prefdata-train.json)."""
    entries = list(folder.iterdir())
    if not entries:
        return True
    names = {e.name for e in entries}
    return "prefdata-train.json" in names and all(
        _matches(e.name, _MODEL_FILES) and (e.is_dir() == (e.name == "runs")) and not e.is_symlink()
        for e in entries)


def holds_model(folder: Path) -> bool:
    """A folder with weights, or with a card that says they were saved."""
    if not folder.is_dir():
        return False
    if any(folder.glob("*.safetensors")):
        return True
    try:
        return json.loads((folder / "prefdata-train.json").read_text()).get("status") == "succeeded"
    except (OSError, ValueError):
        return False


def _recover(target: Path) -> None:
    """Leftovers of runs into `target` whose process is gone: a temporary folder is removed; a model a
    killed swap had put aside (its new one not yet in place) goes back to `target`."""
    from prefdata.store.core import pid_alive

    parent = target.parent
    if not parent.is_dir():
        return
    aside = []
    for p in parent.iterdir():
        m = _SIDE.match(p.name)
        if not m or m.group(1) != target.name or pid_alive(int(m.group(3))):
            continue
        if m.group(2) == "old":
            aside.append(p)
        else:
            shutil.rmtree(p, ignore_errors=True)
    aside.sort(key=lambda p: p.stat().st_mtime)
    if aside and (not target.exists() or (target.is_dir() and not any(target.iterdir()))):
        os.rename(aside.pop(), target)
        print(f"warning: {target}: put back the model a killed run had moved aside", file=sys.stderr)
    for p in aside:
        shutil.rmtree(p, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(staging: Path, target: Path) -> None:
    """Put the whole folder `staging` at `target`; an earlier model there is replaced only now."""
    from prefdata.artifacts import _fsync

    if not target.exists() or not any(target.iterdir()):
        os.rename(staging, target)  # onto an empty folder too: rename(2) replaces it
    elif _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # it holds the earlier model now
    else:
        aside = target.parent / f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        os.rename(target, aside)
        os.rename(staging, target)  # killed between the two: `_recover` puts `aside` back
        shutil.rmtree(aside, ignore_errors=True)
    _fsync(target.parent)


def train_into_folder(fn, cfg, target: Path) -> Path:
    """Run `fn(cfg)` into a temporary folder beside `target` and rename it into place once whole."""
    from prefdata.artifacts import fsync_tree
    from trainers.card import CARD_OUTPUT_DIR

    target = Path(os.path.abspath(target))
    if target.is_symlink():  # write where it leads; the link itself is not swapped away
        target = target.resolve()
    if target.exists() and not target.is_dir():
        raise PrefdataError(f"output_dir {target} is a file, not a folder")
    _recover(target)
    if target.is_dir() and not replaceable(target):
        print(f"warning: {target} holds files prefdata did not write, so the model is written into it in place "
              "(a run killed while saving can leave it half-written); give a new folder to have it written whole",
              file=sys.stderr)
        return fn(cfg)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    cfg.output_dir = str(staging)
    token = CARD_OUTPUT_DIR.set(CARD_OUTPUT_DIR.get() or str(target))
    try:
        card = Path(fn(cfg))
    except TrainingFailed as e:
        msg = str(e)
        if holds_model(target):  # the failed run's card goes beside it: the model there is kept
            failed = target.parent / f"{target.name}.failed"
            shutil.rmtree(failed, ignore_errors=True)
            os.rename(staging, failed)
            msg = msg.replace(str(staging), str(failed)) + f"; the earlier model in {target} is kept"
        else:
            _swap_in(staging, target)
            msg = msg.replace(str(staging), str(target))
        raise TrainingFailed(msg) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        CARD_OUTPUT_DIR.reset(token)
        cfg.output_dir = str(target)
    fsync_tree(staging)
    _swap_in(staging, target)
    return target / card.relative_to(staging)


def train_new_version(kind: str, fn, cfg, name: str | None = None) -> Path:
    """Train into a new version of `name` (default `<kind>-<dataset>`) in the store; returns its card."""
    from prefdata import artifacts, store
    from trainers.card import CARD_OUTPUT_DIR

    if not cfg.dataset:
        raise PrefdataError("no dataset given: pass --dataset REF (a store ref such as name@v1, or a file)")
    p = Path(cfg.dataset)
    name = artifacts.check_model_name(name) if name else artifacts.default_model_name(
        kind, str(p) if p.is_file() else store.resolve(cfg.dataset).name)
    home = store.home()
    staging, final = artifacts.new_run(home, name)
    token = CARD_OUTPUT_DIR.set(str(final / "model"))
    t0 = time.time()
    try:
        card = train_into_folder(fn, cfg, staging / "model")
    except TrainingFailed as e:
        failed = final.with_name(f"failed-{final.name}")  # a card, no weights: not a version
        os.rename(staging, failed)
        raise TrainingFailed(str(e).replace(str(staging), str(failed))) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        CARD_OUTPUT_DIR.reset(token)
    try:
        art = _publish_version(kind, cfg, name, staging, final, card, time.time() - t0)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # not renamed into place: not a version
        raise
    cfg.output_dir = art.ref
    return Path(art.ref) / card.name


def _publish_version(kind: str, cfg, name: str, staging: Path, final: Path, card: Path, elapsed: float):
    from prefdata import artifacts, store
    from prefdata.redact import redact_obj

    info = json.loads((staging / "model" / "prefdata-train.json").read_text())
    lineage = {"parents": [info.get("dataset")], "dataset": info.get("dataset"),
               "dataset_sha256": info.get("dataset_sha256"), "base_model": cfg.model,
               "adapter": info.get("adapter", False),
               "step": {"uses": f"prefdata train {kind}", "config": info.get("config")},
               "command": " ".join(sys.argv), "elapsed_s": round(elapsed, 2)}
    metrics = {k: v for k, v in (info.get("result") or {}).items() if isinstance(v, (int, float, str, dict))}
    manifest = {"kind": "model", "name": name, "lineage": redact_obj(lineage), "metrics": metrics,
                "card_path": str(final / "model" / card.name)}
    md = artifacts.card_markdown(f"{name} (prefdata train {kind})", [(
        "Training", f"`{kind}` on `{info.get('dataset')}` from `{cfg.model}`"
                    + (" (LoRA adapter)" if info.get("adapter") else "")
                    + f". Trainer card: `{final / 'model' / card.name}`.")], manifest)
    return artifacts.publish_run(store.home(), staging, final, manifest, md)
