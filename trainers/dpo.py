"""DPO and its per-pair variants, straight from a dataset version.

    prefdata train dpo --dataset quickstart-rlcd@v1 --set loss=soft --set lora=true --set max_steps=20
    python -m trainers.dpo --dataset quickstart-rlcd-clean@latest --set loss=offset
    python -m trainers.dpo --dataset pairs.parquet --config trainers/configs/quickstart_dpo.yaml

TRL's DPOTrainer keeps only its own columns, so a pair's `label_prob` and `margin` would be dropped
before the loss. `PrefDPOTrainer` subclasses it (TRL >=1.16,<1.17; tests/test_trainers_dpo.py fails
loudly if the internals it relies on move) and carries both columns through the collator into
the loss chosen by name from `trainers.losses.DPO_LOSSES` (sigmoid, ipo, robust, soft, offset, hinge,
simpo; `prefdata train fields dpo` lists them, each function's docstring has its paper and equation).
The loss's record says which per-pair columns it needs (soft: `label_prob`; offset: `margin`, or
delta = log(s_c - s_r) from the score columns, see `offset_source`), which it reads when present
(hinge, simpo: `label_prob`) and whether it uses a reference model (simpo does not).

A tie (label_prob 0.5, or null in older versions) stays at 0.5 for a loss that reads `label_prob` and
is dropped, and counted in the card, by every hard loss. A loss that reads `label_prob` only when the
dataset has it takes every pair as certain when it does not. With >= 10 pairs, `eval_fraction` of them are held
out; eval loss, implicit-reward accuracy and margin on them go into the card.

The reference model is `ref_model` when given; otherwise the starting policy (a frozen copy, or the
base weights with LoRA adapters switched off). With `precompute_ref_log_probs`, reference
log-probs are computed once and cached under `<store home>/refcache/`, keyed on (reference model,
dataset content hash, max_length), so later runs on the same version skip the reference pass.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from prefdata.errors import PrefdataError
from trainers import common
from trainers.losses import DPO_LOSSES, PAIR_COLUMNS, spec


class DPOTrainConfig(common.BaseTrainConfig):
    """`prefdata train dpo` / `python -m trainers.dpo`: every field is a YAML key and a --set override."""

    # The choices and their help come from the registry: a new loss in trainers/losses.py appears here.
    loss: Literal[tuple(DPO_LOSSES)] = Field(  # type: ignore[valid-type]
        "sigmoid", description=" | ".join(f"{s.name} ({s.summary})" for s in DPO_LOSSES.values()) + ".")
    beta: float = Field(0.1, gt=0, le=10, description="DPO's beta (IPO's tau): inverse KL strength, in (0, 10]. "
                                                      "0.1 as in DPO and Self-Rewarding LMs. For simpo it scales the "
                                                      "mean log-prob reward and defaults to 2.0 (SimPO tunes beta in "
                                                      "[2, 10]).")
    simpo_gamma: float = Field(0.5, ge=0, le=10, description="simpo: target reward margin gamma in "
                               "-log s(beta d - gamma), in [0, 10]; SimPO (Meng et al. 2024) tunes gamma/beta in about "
                               "[0.1, 0.8]. 0.5 as TRL's CPOConfig.")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="robust: assumed global flip rate eps in [0, 0.5) "
                                                                  "(Chowdhury et al. 2024). Per-pair: use loss=soft.")
    offset_alpha: float = Field(1.0, ge=0, description="offset: alpha in ODPO's -log s(beta h - alpha * delta), >= 0. "
                                "Not scaled by beta.")
    offset_source: Literal["auto", "margin", "scores"] = Field(
        "auto", description="offset: where delta comes from. scores: delta = log(s_c - s_r) from chosen_score and "
        "rejected_score (ODPO, Amini et al. 2024, sec. 4: the log of the score gap, so a 1-to-5 rubric gap of 4 "
        "gives 1.39, not 4); margin: delta = the `margin` column as it is; auto: scores when every pair has both "
        "scores, else margin.")
    eval_fraction: float = Field(0.1, ge=0, le=0.5, description="Held-out share of pairs, in [0, 0.5]; needs >= 10 "
                                 "pairs. Eval loss, reward accuracy and margins on it go into the card.")
    ref_model: str | None = Field(None, description="Reference model (hub id or path); default: the starting policy "
                                                    "(with LoRA: the base weights, adapters off).")
    precompute_ref_log_probs: bool = Field(False, description="Compute reference log-probs once, cached under "
                                           "<store home>/refcache/ keyed on (model, dataset hash, max_length).")

    @model_validator(mode="after")
    def _loss_defaults(self):
        # e.g. simpo's beta 2.0: SimPO's reward is a mean token log-prob, far smaller than DPO's summed log-ratio
        loss = spec(self.loss)
        for key, value in loss.defaults.items():
            if key not in self.model_fields_set:
                setattr(self, key, value)
        if loss.reference_free and (self.ref_model or self.precompute_ref_log_probs):
            print(f"warning: loss={self.loss} uses no reference model; ref_model / precompute_ref_log_probs are "
                  "ignored", file=sys.stderr)
        return self

    @model_validator(mode="after")
    def _robust_needs_eps(self):
        if self.loss == "robust" and self.label_smoothing == 0:
            print("warning: loss=robust with label_smoothing=0 is plain sigmoid DPO", file=sys.stderr)
        return self


Config = DPOTrainConfig


class PreferenceCollator(DataCollatorForPreference):
    """TRL's collator plus the per-pair float columns our losses read (PAIR_COLUMNS), as (b,) tensors."""

    def torch_call(self, examples):
        out = super().torch_call(examples)
        for col in PAIR_COLUMNS:
            if col in examples[0]:
                out[col] = torch.tensor([float(e[col]) for e in examples], dtype=torch.float32)
        return out


@dataclass
class PairRewards:
    logits: torch.Tensor  # (b, 2): implicit rewards of chosen and rejected


class PrefDPOTrainer(DPOTrainer):
    """DPOTrainer whose loss reads per-pair `label_prob` and `margin` (see the module docstring).

    Overrides, all checked by the TRL-internals test: `_set_signature_columns_if_needed` (keep our
    columns), `compute_ref_log_probs` (keep them away from the model), `_precompute_ref_logps`
    (persistent cache) and `_compute_loss` (our loss registry)."""

    def __init__(self, *args, pref_loss: str = "sigmoid", offset_alpha: float = 1.0, simpo_gamma: float = 0.5,
                 ref_cache_key: str | None = None, **kwargs):
        self.pref_loss, self.offset_alpha, self.ref_cache_key = pref_loss, offset_alpha, ref_cache_key
        self.simpo_gamma = simpo_gamma
        loss = spec(pref_loss)  # the registry's record: the function and whether it needs a reference
        self.reference_free, self.loss_fn = loss.reference_free, loss.fn
        super().__init__(*args, **kwargs)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = list(self._signature_columns) + [
            c for c in PAIR_COLUMNS if c not in self._signature_columns]  # TRL would drop them

    def compute_ref_log_probs(self, model, inputs):
        return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k not in PAIR_COLUMNS})

    def _precompute_ref_logps(self, dataset, name, batch_size):
        """TRL's pass, but cached across runs and processes: TRL's own cache lives in the datasets
        cache of one in-memory dataset and is keyed on its fingerprint, which changes per load.
        A reference-free loss gets zero columns without any forward pass (TRL then loads no reference)."""
        if self.reference_free:
            zeros = [0.0] * len(dataset)
            return dataset.add_column("ref_chosen_logps", zeros).add_column("ref_rejected_logps", zeros)
        if self.ref_cache_key is None:
            return super()._precompute_ref_logps(dataset, name, batch_size)
        import datasets as hfd

        from prefdata.store import home

        path = home() / "refcache" / f"{self.ref_cache_key}-{name}.parquet"
        if path.is_file():
            import pyarrow.parquet as pq

            cached = hfd.Dataset(pq.read_table(path))  # in memory: two float columns, no arrow cache round trip
            if len(cached) == len(dataset):
                return hfd.concatenate_datasets([dataset, cached], axis=1)
        full = super()._precompute_ref_logps(dataset, name, batch_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        full.select_columns(["ref_chosen_logps", "ref_rejected_logps"]).to_parquet(str(tmp))
        tmp.replace(path)  # atomic: a killed run never leaves a half cache that a later run trusts
        return full

    def _logps(self, model, inputs):
        """Summed completion log-probs, (2b,) = [chosen..., rejected...], via TRL's fused LM head
        (patched onto the model in TRL's __init__; it never materialises the full logits)."""
        mask = inputs["completion_mask"]  # (2b, T)
        labels = inputs["input_ids"].masked_fill(mask == 0, -100)
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels,
                    fused_lm_head=True, use_cache=False)
        return out.log_probs[:, -(mask.size(1) - 1):].sum(dim=1)  # (2b,); log_probs are shifted by one

    def _ref_logps(self, inputs):
        if self.precompute_ref_logps:
            return inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        with torch.no_grad():
            if self.ref_model is not None:
                ref = self._logps(self.ref_model, inputs)
            else:
                # A LoRA policy's reference is the base model: the same weights with adapters off.
                with self.accelerator.unwrap_model(self.model).disable_adapter():
                    ref = self._logps(self.model, inputs)
        return ref.chunk(2, dim=0)

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        chosen_logps, rejected_logps = self._logps(model, inputs).chunk(2, dim=0)  # (b,), (b,)
        chosen_len, rejected_len = inputs["completion_mask"].sum(1).float().chunk(2, dim=0)  # (b,), (b,)
        if self.reference_free:
            # SimPO's implicit reward is the mean token log-prob; it stands where DPO's log-ratio does in the metrics.
            chosen_lr, rejected_lr = chosen_logps / chosen_len.clamp(min=1), rejected_logps / rejected_len.clamp(min=1)
        else:
            ref_chosen, ref_rejected = self._ref_logps(inputs)
            chosen_lr, rejected_lr = chosen_logps - ref_chosen, rejected_logps - ref_rejected
        h = chosen_lr - rejected_lr  # (b,)
        ones = torch.ones_like(h)
        per_pair = self.loss_fn(
            h, beta=self.beta, label_smoothing=self.label_smoothing, alpha=self.offset_alpha, gamma=self.simpo_gamma,
            label_prob=inputs.get("label_prob", ones).to(h), margin=inputs.get("margin", 0 * ones).to(h),
            chosen_logratio=chosen_lr, rejected_logratio=rejected_lr, chosen_len=chosen_len, rejected_len=rejected_len,
            chosen_logps=chosen_logps, rejected_logps=rejected_logps)
        loss = per_pair.mean()
        self._log_metrics(mode, chosen_lr.detach(), rejected_lr.detach(), chosen_logps.detach(),
                          rejected_logps.detach())
        if not return_outputs:
            return loss
        # TRL's prediction_step reads `outputs.logits` when prediction_loss_only=False; the implicit
        # rewards (b, 2) = beta * [chosen, rejected] log-ratios are what a compute_metrics can use.
        rewards = self.beta * torch.stack([chosen_lr, rejected_lr], dim=1).detach()
        return loss, PairRewards(logits=rewards)

    def _log_metrics(self, mode, chosen_lr, rejected_lr, chosen_logps, rejected_logps):
        # The same names TRL logs, so curves and dashboards read alike.
        gather = self.accelerator.gather_for_metrics
        cr, rr = gather(self.beta * chosen_lr), gather(self.beta * rejected_lr)
        m = self._metrics[mode]
        m["rewards/chosen"].append(cr.mean().item())
        m["rewards/rejected"].append(rr.mean().item())
        m["rewards/accuracies"].append((cr > rr).float().mean().item())
        m["rewards/margins"].append((cr - rr).mean().item())
        m["logps/chosen"].append(gather(chosen_logps).mean().item())
        m["logps/rejected"].append(gather(rejected_logps).mean().item())


def _has_scores(ds) -> bool:
    return all(c in ds.column_names and all(x is not None for x in ds[c]) for c in ("chosen_score", "rejected_score"))


def _offset_margins(ds, source: str = "auto") -> tuple[list[float], str]:
    """(ODPO offsets per pair, the source used). From scores: log(s_c - s_r), the paper's offset; a
    raw rubric gap (1..4 on a 5-point scale) would be ~3x too strong at beta 0.1. From margin: as is."""
    import numpy as np

    if source == "auto":
        source = "scores" if _has_scores(ds) else "margin"
    if source == "margin":
        if "margin" not in ds.column_names:
            raise PrefdataError("the offset (ODPO) loss needs a `margin` column, or chosen_score and rejected_score "
                                "on every pair (offset_source=scores)")
        # A null margin is the default 0. NaN never gets here (load_dataset_ref refuses it).
        margins = np.asarray([0.0 if m is None else m for m in ds["margin"]], dtype=float)
        if not np.any(margins):
            print("warning: every margin is 0, so the offset loss is plain sigmoid DPO", file=sys.stderr)
        return [float(x) for x in margins], "margin"
    common.require_columns(ds, ["chosen_score", "rejected_score"], "the offset (ODPO) loss with offset_source=scores")
    cs = np.asarray([np.nan if x is None else x for x in ds["chosen_score"]], dtype=float)
    rs = np.asarray([np.nan if x is None else x for x in ds["rejected_score"]], dtype=float)
    gap = cs - rs
    bad = np.flatnonzero(~np.isfinite(gap) | (gap <= 0))
    if bad.size:
        raise PrefdataError(f"offset loss: row {bad[0] + 1} has no positive score gap (chosen_score - rejected_score "
                            f"= {gap[bad[0]]}), so log(s_c - s_r) is undefined; set offset_source=margin to use the "
                            "`margin` column instead")
    return [float(x) for x in np.log(gap)], "scores"


def prepare(cfg: DPOTrainConfig):
    """Load and check data, model and reference; every bad input fails here, before any step.
    Returns (dataset, provenance, model, tokenizer, reference model or None, local model dir, notes
    for the card: how ties were handled and where the ODPO offset came from)."""
    ds, prov = common.load_dataset_ref(cfg.dataset, "pair")
    loss = spec(cfg.loss)
    needs = [c for c in loss.needs if c != "margin"]  # a margin's source is checked by _offset_margins
    common.require_columns(ds, ["prompt", "chosen", "rejected", *needs], f"DPO (loss={cfg.loss})")
    optional = [c for c in loss.optional if c in ds.column_names]
    soft = "label_prob" in (*loss.needs, *optional)
    ds, ties = common.resolve_ties(ds, soft=soft, what=f"DPO loss={cfg.loss}")
    notes = dict(ties or {})
    if "margin" in loss.needs:  # ODPO's offset: the margin column, or log(s_c - s_r) from the scores
        margins, notes["offset_source"] = _offset_margins(ds, cfg.offset_source)
        ds = ds.remove_columns([c for c in ["margin"] if c in ds.column_names]).add_column("margin", margins)
    keep = ["prompt", "chosen", "rejected", *loss.needs, *optional]
    ds = ds.select_columns(keep)
    model, tok, path = common.load_model_and_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    if common.is_conversational(ds):
        common.check_chat_template(tok, cfg.model)
    common.check_lengths(ds, tok, cfg.max_length)
    ref = None
    if cfg.ref_model and not loss.reference_free:
        ref, _, _ = common.load_model_and_tokenizer(cfg.ref_model, trust_remote_code=cfg.trust_remote_code)
    elif not cfg.lora and not cfg.precompute_ref_log_probs and not loss.reference_free:
        ref = copy.deepcopy(model).eval()  # TRL needs an explicit reference for an in-memory policy
    return ds, prov, model, tok, ref, path, notes


def split_eval(ds, cfg: DPOTrainConfig):
    """(train, held-out or None): the same rule as the reward trainer (>= 10 pairs, seeded)."""
    if cfg.eval_fraction <= 0 or len(ds) < 10:
        return ds, None
    split = ds.train_test_split(test_size=cfg.eval_fraction, seed=cfg.seed)
    return split["train"], split["test"]


def ref_cache_key(cfg: DPOTrainConfig, prov: dict, path: str, selection: dict | None = None) -> str | None:
    """(reference model, dataset content hash, max_length) -> cache key; a sidecar JSON names the parts."""
    if not (cfg.precompute_ref_log_probs and prov.get("dataset_sha256")):
        return None
    from prefdata.models import resolve_model
    from prefdata.store import home

    ref_path = resolve_model(cfg.ref_model) if cfg.ref_model else path
    parts = {"model": str(ref_path), "model_fingerprint": common.model_fingerprint(ref_path),
             "dataset": prov["dataset"], "dataset_sha256": prov["dataset_sha256"], "max_length": cfg.max_length}
    if selection:  # dropped ties and the eval split change which rows the cached columns line up with
        parts["selection"] = selection
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]
    side = home() / "refcache" / f"{key}.json"
    side.parent.mkdir(parents=True, exist_ok=True)
    side.write_text(json.dumps(parts, indent=2))
    return key


def build_trainer(cfg: DPOTrainConfig, ds, prov, model, tok, ref, path, notes=None) -> PrefDPOTrainer:
    cfg.output_dir = cfg.output_dir or common.default_output_dir("dpo", prov)
    ds, heldout = split_eval(ds, cfg)
    free = spec(cfg.loss).reference_free
    selection = {"ties_dropped": "dropped" in str((notes or {}).get("ties_handling", "")),
                 "eval": [cfg.eval_fraction, cfg.seed] if heldout is not None else None}
    # loss_type only matters for TRL's own argument checks (e.g. robust's eps range); our loss replaces TRL's.
    # A reference-free loss "precomputes" zeros (see _precompute_ref_logps), so TRL loads no reference model.
    args = DPOConfig(**common.training_args_common(cfg), beta=cfg.beta, label_smoothing=cfg.label_smoothing,
                     max_length=cfg.max_length, precompute_ref_log_probs=cfg.precompute_ref_log_probs or free,
                     loss_type=spec(cfg.loss).trl or "sigmoid")
    trainer = PrefDPOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds, eval_dataset=heldout,
                             processing_class=tok, peft_config=common.peft_config(cfg), pref_loss=cfg.loss,
                             offset_alpha=cfg.offset_alpha, simpo_gamma=cfg.simpo_gamma,
                             ref_cache_key=None if free else ref_cache_key(cfg, prov, path, selection if any(
                                 selection.values()) else None),
                             data_collator=PreferenceCollator(pad_token_id=tok.pad_token_id, max_length=cfg.max_length))
    trainer.card_notes = {"train_pairs": len(ds), "eval_pairs": len(heldout) if heldout is not None else 0,
                          **(notes or {})}
    return trainer


def held_out_metrics(trainer) -> dict | None:
    """Eval loss, implicit-reward accuracy and margin on the held-out pairs, or None without a split."""
    if trainer.eval_dataset is None:
        return None
    m = trainer.evaluate()
    keys = {"loss": "eval_loss", "reward_accuracy": "eval_rewards/accuracies", "reward_margin": "eval_rewards/margins",
            "reward_chosen": "eval_rewards/chosen", "reward_rejected": "eval_rewards/rejected"}
    return {"pairs": len(trainer.eval_dataset), **{k: m[v] for k, v in keys.items() if v in m}}


@common.atomic_output("dpo")
def train(cfg: DPOTrainConfig) -> Path:
    """Train and save the model (or LoRA adapter), card and curves; returns the card path."""
    ds, prov, model, tok, ref, path, notes = prepare(cfg)
    trainer = build_trainer(cfg, ds, prov, model, tok, ref, path, notes)
    extra = {"pairs": trainer.card_notes["train_pairs"], **trainer.card_notes}
    guard = common.guard_finite(trainer)
    trainer.train()
    common.raise_if_failed(guard, trainer, cfg, "dpo", prov, extra)
    extra["eval"] = held_out_metrics(trainer)
    return common.save_outputs(trainer, tok, cfg, "dpo", prov, extra)


def main(argv: list[str] | None = None) -> None:
    from trainers.cli import run_from_argv

    run_from_argv("dpo", argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
