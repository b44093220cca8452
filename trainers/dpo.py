"""DPO and its per-example variants, straight from a dataset version.

    prefdata train dpo --dataset quickstart-rlcd@v1 --set loss=soft --set lora=true --set max_steps=20
    python -m trainers.dpo --dataset quickstart-rlcd-clean@latest --set loss=offset

TRL's DPOTrainer keeps only its own columns, so a pair's `label_prob` and `margin` would be dropped
before the loss. `PrefDPOTrainer` subclasses it (TRL >=1.16,<1.17; tests/test_trainers.py fails
loudly if the internals it relies on move) to carry both columns through the collator into
`trainers.losses`:
  sigmoid  -log s(beta h)                                 (Rafailov et al. 2023)
  ipo      (h/len - 1/(2 beta))^2                         (Azar et al. 2023)
  robust   TRL's unbiased robust loss, global eps          (Chowdhury et al. 2024)
  soft     cDPO with eps = 1 - label_prob, per pair        (Mitchell 2023; Secrets of RLHF II)
  offset   -log s(beta h - margin), per pair               (ODPO, Amini et al. 2024)
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from prefdata.errors import ConfigError, PrefdataError
from prefdata.models import DEFAULT_MODEL
from trainers import common
from trainers.losses import DPO_LOSSES

EXTRA_COLUMNS = ("label_prob", "margin")


@dataclass
class DPOTrainConfig(common.BaseTrainConfig):
    loss: Literal["sigmoid", "ipo", "robust", "soft", "offset"] = "sigmoid"
    beta: float = field(default=0.1, metadata={"help": "KL strength; 0.1 as in DPO and Self-Rewarding LMs. > 0."})
    label_smoothing: float = field(default=0.0, metadata={"help": "robust: assumed flip rate eps in [0, 0.5)."})
    offset_alpha: float = field(default=1.0, metadata={"help": "offset: scale of log(s_c - s_r) when the margin "
                                                                 "column is all zero and scores exist (ODPO)."})
    ref_model: str | None = field(default=None, metadata={"help": "Reference model; default: the initial policy."})
    precompute_ref_log_probs: bool = field(default=False, metadata={"help": "Compute reference log-probs once and "
                                           "cache them next to the dataset version, keyed on (model, version, max_length)."})

    def __post_init__(self):
        if self.beta <= 0:
            raise ValueError("beta must be > 0")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError("label_smoothing must be in [0, 0.5)")


class PreferenceCollator(DataCollatorForPreference):
    """TRL's collator plus the per-pair columns our losses read."""

    def torch_call(self, examples):
        out = super().torch_call(examples)
        for col in EXTRA_COLUMNS:
            if col in examples[0]:
                out[col] = torch.tensor([float(e[col]) for e in examples], dtype=torch.float32)
        return out


class PrefDPOTrainer(DPOTrainer):
    """DPOTrainer whose loss reads per-pair `label_prob` and `margin` (see module docstring)."""

    def __init__(self, *args, pref_loss: str = "sigmoid", ref_cache_key: str | None = None, **kwargs):
        self.pref_loss = pref_loss
        self.ref_cache_key = ref_cache_key
        super().__init__(*args, **kwargs)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = list(self._signature_columns) + [c for c in EXTRA_COLUMNS
                                                                   if c not in self._signature_columns]

    def _precompute_ref_logps(self, dataset, name, batch_size):
        """Reuse reference log-probs across runs: cached under the store home, keyed on
        (reference model, dataset version, max length, split name)."""
        if self.ref_cache_key is None:
            return super()._precompute_ref_logps(dataset, name, batch_size)
        import datasets as hfd

        from prefdata.store import home

        path = home() / "refcache" / f"{self.ref_cache_key}-{name}.parquet"
        if path.is_file():
            cached = hfd.Dataset.from_parquet(str(path))
            if len(cached) == len(dataset):
                return hfd.concatenate_datasets([dataset, cached], axis=1)
        full = super()._precompute_ref_logps(dataset, name, batch_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        full.select_columns(["ref_chosen_logps", "ref_rejected_logps"]).to_parquet(str(tmp))
        tmp.rename(path)
        return full

    def _logps(self, model, inputs):
        """Summed completion log-probs, (2b,) = [chosen..., rejected...], via TRL's fused LM head."""
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels,
                    fused_lm_head=True, use_cache=False)
        seq_len = completion_mask.size(1) - 1
        return out.log_probs[:, -seq_len:].sum(dim=1)

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        chosen_logps, rejected_logps = self._logps(model, inputs).chunk(2, dim=0)
        if self.precompute_ref_logps:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            with torch.no_grad():
                if self.ref_model is None:
                    # A LoRA policy's reference is the base model: the same weights with adapters off.
                    unwrapped = self.accelerator.unwrap_model(self.model)
                    with unwrapped.disable_adapter():
                        ref = self._logps(self.model, inputs)
                else:
                    ref = self._logps(self.ref_model, inputs)
            ref_chosen, ref_rejected = ref.chunk(2, dim=0)
        chosen_lr, rejected_lr = chosen_logps - ref_chosen, rejected_logps - ref_rejected
        h = chosen_lr - rejected_lr  # (b,)
        chosen_len, rejected_len = inputs["completion_mask"][:, 1:].sum(1).float().chunk(2, dim=0)
        b = h.shape[0]
        per_pair = DPO_LOSSES[self.pref_loss](
            h, beta=self.beta, label_smoothing=self.label_smoothing,
            label_prob=inputs.get("label_prob", torch.ones(b)).to(h.device),
            margin=inputs.get("margin", torch.zeros(b)).to(h.device),
            chosen_logratio=chosen_lr, rejected_logratio=rejected_lr, chosen_len=chosen_len, rejected_len=rejected_len)
        loss = per_pair.mean()
        cr, rr = self.beta * chosen_lr.detach(), self.beta * rejected_lr.detach()
        m = self._metrics[mode]
        m["rewards/chosen"].append(cr.mean().item())
        m["rewards/rejected"].append(rr.mean().item())
        m["rewards/accuracies"].append((cr > rr).float().mean().item())
        m["rewards/margins"].append((cr - rr).mean().item())
        m["logps/chosen"].append(chosen_logps.detach().mean().item())
        m["logps/rejected"].append(rejected_logps.detach().mean().item())
        return (loss, None) if return_outputs else loss


def prepare(cfg: DPOTrainConfig):
    """Load and check data, model and reference before any training step."""
    ds, prov = common.load_dataset_ref(cfg.dataset, "pair")
    common.require_columns(ds, ["prompt", "chosen", "rejected"], f"DPO ({cfg.loss})")
    if cfg.loss == "soft":
        common.require_columns(ds, ["label_prob"], "the soft-label loss")
        common.check_label_prob(ds)
    if cfg.loss == "offset":
        common.require_columns(ds, ["margin"], "the offset (ODPO) loss")
        import numpy as np

        margins = np.asarray([m if m is not None else np.nan for m in ds["margin"]], dtype=float)
        if np.all(np.nan_to_num(margins) == 0):
            common.require_columns(ds, ["chosen_score", "rejected_score"],
                                   "an ODPO offset (margin is all zero, so it is computed from score gaps)")
            gap = np.asarray(ds["chosen_score"], dtype=float) - np.asarray(ds["rejected_score"], dtype=float)
            if np.any(~np.isfinite(gap)) or np.any(gap <= 0):
                raise PrefdataError("offset loss: chosen_score must exceed rejected_score in every row to take "
                                    "log(s_c - s_r); set a margin column instead")
            margins = cfg.offset_alpha * np.log(gap)
        ds = ds.remove_columns(["margin"]).add_column("margin", [float(x) for x in np.nan_to_num(margins)])
    keep = ["prompt", "chosen", "rejected"] + [c for c in EXTRA_COLUMNS if c in ds.column_names]
    ds = ds.select_columns(keep)
    if "label_prob" in ds.column_names:
        ds = ds.map(lambda r: {"label_prob": 1.0 if r["label_prob"] is None else r["label_prob"]})
    model, tok, path = common.load_model_and_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    common.check_chat_template(tok, cfg.model)
    common.check_lengths(ds, tok, cfg.max_length)
    ref = None
    if cfg.ref_model:
        ref, _, _ = common.load_model_and_tokenizer(cfg.ref_model, trust_remote_code=cfg.trust_remote_code)
    elif not cfg.lora and not cfg.precompute_ref_log_probs:
        # An in-memory policy needs an explicit reference: a frozen copy of the starting weights.
        import copy

        ref = copy.deepcopy(model).eval()
    return ds, prov, model, tok, ref, path


def build_trainer(cfg: DPOTrainConfig, ds, prov, model, tok, ref, path) -> PrefDPOTrainer:
    cfg.output_dir = cfg.output_dir or common.default_output_dir("dpo", prov)
    args = DPOConfig(**common.training_args_common(cfg), beta=cfg.beta, label_smoothing=cfg.label_smoothing,
                     max_length=cfg.max_length, precompute_ref_log_probs=cfg.precompute_ref_log_probs,
                     loss_type="robust" if cfg.loss == "robust" else "sigmoid")
    key = None
    if cfg.precompute_ref_log_probs and prov.get("dataset_sha256"):
        blob = f"{cfg.ref_model or path}|{prov['dataset_sha256']}|{cfg.max_length}"
        key = hashlib.sha256(blob.encode()).hexdigest()[:24]
    return PrefDPOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=tok,
                          peft_config=common.peft_config(cfg), pref_loss=cfg.loss, ref_cache_key=key,
                          data_collator=PreferenceCollator(pad_token_id=tok.pad_token_id, max_length=cfg.max_length))


def train(cfg: DPOTrainConfig) -> Path:
    """Train and save; returns the model card path."""
    ds, prov, model, tok, ref, path = prepare(cfg)
    trainer = build_trainer(cfg, ds, prov, model, tok, ref, path)
    trainer.train()
    trainer.save_model(cfg.output_dir)
    tok.save_pretrained(cfg.output_dir)
    return common.write_model_card(cfg.output_dir, "dpo", cfg, prov, trainer.state.log_history)


def main(argv: list[str] | None = None) -> None:
    from trainers.cli import run_from_argv

    run_from_argv("dpo", argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
