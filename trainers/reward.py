"""Bradley-Terry reward models with per-pair margins and soft labels, straight from a dataset version.

    prefdata train reward --dataset quickstart-rlcd-clean@latest --set max_steps=50
    python -m trainers.reward --dataset pairs.parquet --set use_margin=false --set lora=true

loss = -[p log s(d) + (1 - p) log s(-d)], d = r_c - r_r - m, with m the pair's `margin` (Llama 2's
margin loss; Secrets of RLHF II's adaptive margin) and p its `label_prob` (soft labels; p = 1 is
TRL's RewardTrainer loss exactly). Variants, each a config field:
- `center_rewards_coefficient` c: + c * mean((r_c + r_r)^2), TRL's centring (Eisenstein et al. 2023);
- `whiten`: the mean and std of the trained model's rewards on its training answers are saved in
  `reward_norm.json` (Llama 2's whitening); scorers apply them with `trainers.reward_norm`;
- `sft_coefficient` a: + a * NLL(chosen answer | prompt) through the base model's LM head, frozen,
  on the reward model's last hidden states (GRM, Yang et al. 2024, arXiv 2406.10216): the backbone
  keeps its language modelling while it learns the reward, which the paper finds generalises better.
ColossalChat's log-exp loss log(1 + exp(r_r - r_c)) is this loss with p = 1 (tests/test_losses_rank.py).
The output is a plain 1-logit
`AutoModelForSequenceClassification` plus tokenizer (LoRA adapters are merged), so it loads as an
HF reward model and plugs into curation as a `reward_model` voter. Held-out pairwise accuracy
(share of held-out pairs where r_c > r_r) goes into the card.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from trl import RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference as RewardCollatorBase

from trainers import common
from trainers.losses import bradley_terry, center_penalty
from trainers.reward_norm import save_reward_norm


class RewardTrainConfig(common.BaseTrainConfig):
    """`prefdata train reward`: every field is a YAML key and a --set override."""

    learning_rate: float = Field(1e-5, gt=0, le=1, description="AdamW step size, in (0, 1].")
    use_margin: bool = Field(True, description="Subtract each pair's `margin` m inside the sigmoid (Llama 2 eq. 2; "
                                               "its small margin set {1, 2/3, 1/3, 0} worked best).")
    use_soft_labels: bool = Field(True, description="Weight both orders by each pair's `label_prob` p in [0, 1] "
                                                    "(cDPO-style soft label, Secrets of RLHF II).")
    eval_fraction: float = Field(0.1, ge=0, le=0.5, description="Held-out share of pairs for pairwise accuracy, "
                                                                "in [0, 0.5]; needs >= 10 pairs.")
    center_rewards_coefficient: float | None = Field(None, ge=0, le=10, description="c in + c * mean((r_c + r_r)^2), "
                                                     "TRL's reward centring (Eisenstein et al. 2023), in [0, 10]; "
                                                     "TRL suggests 0.01. None: off.")
    whiten: bool = Field(False, description="Save the mean and std of the trained model's rewards on its training "
                         "answers to reward_norm.json (Llama 2's whitening, Touvron et al. 2023, sec. 3.2.2); "
                         "scorers map r -> (r - mean) / std.")
    sft_coefficient: float = Field(0.0, ge=0, le=10, description="GRM (Yang et al. 2024, arXiv 2406.10216): a in "
                                   "+ a * NLL(chosen | prompt) through the base model's frozen LM head on the reward "
                                   "model's last hidden state, in [0, 10]; the paper uses 0.01. 0: off.")


Config = RewardTrainConfig


class RewardCollator(RewardCollatorBase):
    """TRL's reward collator (which keeps `margin`) plus `label_prob` and GRM's `prompt_len`."""

    def torch_call(self, examples):
        out = super().torch_call(examples)
        if "label_prob" in examples[0]:
            out["label_prob"] = torch.tensor([float(e["label_prob"]) for e in examples], dtype=torch.float32)
        if "prompt_len" in examples[0]:
            out["prompt_len"] = torch.tensor([int(e["prompt_len"]) for e in examples])
        return out


class PrefRewardTrainer(RewardTrainer):
    """RewardTrainer whose loss is `losses.bradley_terry` with per-pair margin and soft label, plus the
    optional centring penalty and GRM's SFT term (`lm_head`: the frozen (V, d) head it goes through)."""

    def __init__(self, *args, center_coefficient: float | None = None, sft_coefficient: float = 0.0,
                 lm_head: torch.Tensor | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.center_coefficient, self.sft_coefficient = center_coefficient, sft_coefficient
        self.lm_head = lm_head

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = list(self._signature_columns) + [
            c for c in ("label_prob", "prompt_len") if c not in self._signature_columns]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        margin, label_prob = inputs.get("margin"), inputs.get("label_prob")
        grm = self.sft_coefficient > 0
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False,
                    output_hidden_states=grm)
        r_c, r_r = torch.chunk(out.logits.squeeze(-1), 2)  # batch is [chosen..., rejected...]
        loss = bradley_terry(r_c, r_r, margin=margin, label_prob=label_prob).mean()
        if self.center_coefficient:
            loss = loss + center_penalty(r_c, r_r, self.center_coefficient)
        if grm:
            sft = self.chosen_nll(out.hidden_states[-1], inputs)
            loss = loss + self.sft_coefficient * sft
            self._metrics[mode]["sft_nll"].append(self.accelerator.gather_for_metrics(sft.detach()).mean().item())
        gather = self.accelerator.gather_for_metrics
        with torch.no_grad():
            self._metrics[mode]["accuracy"].append(gather((r_c > r_r).float()).mean().item())
            self._metrics[mode]["margin"].append(gather(r_c - r_r).mean().item())
        return (loss, out) if return_outputs else loss

    def chosen_nll(self, hidden, inputs):
        """Token-mean NLL of the chosen answers (prompt tokens masked) through the frozen LM head."""
        b = hidden.size(0) // 2
        h, ids = hidden[:b, :-1], inputs["input_ids"][:b]  # (b, T-1, d), (b, T)
        pos = torch.arange(ids.size(1) - 1, device=ids.device)[None]  # position t predicts token t + 1
        mask = inputs["attention_mask"][:b, 1:].bool() & (pos + 1 >= inputs["prompt_len"][:, None])
        logits = h[mask] @ self.lm_head.to(h).T  # (n_tokens, V): only the answer tokens
        return F.cross_entropy(logits.float(), ids[:, 1:][mask])


def pairwise_accuracy(model, tok, ds, max_length: int) -> float:
    """Share of pairs whose chosen reply gets the higher reward (ties count as wrong)."""
    r_c, r_r = score_pairs(model, tok, ds, max_length)
    return float(np.mean(r_c > r_r)) if len(r_c) else float("nan")


def score_pairs(model, tok, ds, max_length: int, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(rewards of the chosen answers, of the rejected ones), each (n,), batched by length."""
    texts = [tok.apply_chat_template(row["prompt"] + row[k], tokenize=False) if isinstance(row["prompt"], list)
             else f"{row['prompt']}{row[k]}" for k in ("chosen", "rejected") for row in ds]
    model.eval()
    out = np.zeros(len(texts))
    order = np.argsort([len(t) for t in texts])
    device = next(model.parameters()).device
    with torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            idx = order[s:s + batch_size]
            enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt").to(device)
            out[idx] = model(**enc).logits[:, 0].float().cpu().numpy()
    return out[:len(ds)], out[len(ds):]


def prompt_lengths(ds, tok):
    """Tokens of each prompt with the chat template's generation prefix: where the chosen answer starts
    in TRL's tokenisation of prompt + chosen (GRM's SFT term covers the answer only)."""
    def n(row):
        p = row["prompt"]
        text = tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) if isinstance(p, list) else p
        return {"prompt_len": len(tok(text, add_special_tokens=not isinstance(p, list))["input_ids"])}

    return ds.map(n)


def frozen_lm_head(path: str, trust_remote_code: bool = False) -> torch.Tensor:
    """The base checkpoint's output embedding (V, d), detached: GRM's head stays as it was pre-trained
    even when the backbone's (possibly tied) input embedding trains."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=trust_remote_code)
    head = lm.get_output_embeddings().weight.detach().clone()
    del lm
    return head


def prepare_pairs(ds, cfg: RewardTrainConfig):
    """(pairs with the columns the loss reads, tie note for the card or None). Ties (label_prob 0.5
    or null) stay at 0.5 with soft labels and are dropped without them."""
    common.require_columns(ds, ["prompt", "chosen", "rejected"], "reward modelling")
    ds, ties = common.resolve_ties(ds, soft=cfg.use_soft_labels, what="the reward loss without soft labels")
    cols = ["prompt", "chosen", "rejected"] + (["prompt_len"] if "prompt_len" in ds.column_names else [])
    if cfg.use_margin:
        common.require_columns(ds, ["margin"], "the margin loss (set use_margin=false to train without)")
        ds = ds.map(lambda r: {"margin": 0.0 if r["margin"] is None else float(r["margin"])})
        cols.append("margin")
    if cfg.use_soft_labels:
        common.require_columns(ds, ["label_prob"], "soft labels (set use_soft_labels=false to train without)")
        cols.append("label_prob")
    return ds.select_columns(cols), ties


def build_trainer(cfg: RewardTrainConfig):
    """(PrefRewardTrainer, tokenizer, provenance, tie note, train pairs, held-out pairs or None), the pairs
    as read (the trainer holds TRL's tokenised copies); every bad input fails here, before any step."""
    from trl import RewardConfig

    ds, prov = common.load_dataset_ref(cfg.dataset, "pair")
    model, tok, path = common.load_model_and_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code,
                                                       seq_cls=True)
    if cfg.sft_coefficient > 0:
        ds = prompt_lengths(ds, tok)
    ds, ties = prepare_pairs(ds, cfg)
    if common.is_conversational(ds):
        common.check_chat_template(tok, cfg.model)
    common.check_lengths(ds, tok, cfg.max_length)
    lm_head = frozen_lm_head(path, cfg.trust_remote_code) if cfg.sft_coefficient > 0 else None
    heldout = None
    if cfg.eval_fraction > 0 and len(ds) >= 10:
        split = ds.train_test_split(test_size=cfg.eval_fraction, seed=cfg.seed)
        ds, heldout = split["train"], split["test"]
    cfg.output_dir = cfg.output_dir or common.default_output_dir("reward", prov)
    args = RewardConfig(**common.training_args_common(cfg), max_length=cfg.max_length)
    trainer = PrefRewardTrainer(model=model, args=args, train_dataset=ds, eval_dataset=heldout, processing_class=tok,
                                peft_config=common.peft_config(cfg, task="SEQ_CLS"),
                                data_collator=RewardCollator(pad_token_id=tok.pad_token_id),
                                center_coefficient=cfg.center_rewards_coefficient,
                                sft_coefficient=cfg.sft_coefficient, lm_head=lm_head)
    return trainer, tok, prov, ties, ds, heldout


@common.atomic_output("reward")
def train(cfg: RewardTrainConfig) -> Path:
    trainer, tok, prov, ties, ds, heldout = build_trainer(cfg)
    guard = common.guard_finite(trainer)
    trainer.train()
    extra = {"train_pairs": len(ds), **(ties or {})}
    common.raise_if_failed(guard, trainer, cfg, "reward", prov, extra)
    if heldout is not None:
        extra["heldout_pairwise_accuracy"] = pairwise_accuracy(trainer.model, tok, heldout, cfg.max_length)
        extra["heldout_pairs"] = len(heldout)
        m = trainer.evaluate()  # the training loss (margin, soft labels) on held-out pairs, batched like training
        extra["eval"] = {"pairs": len(heldout), "loss": m.get("eval_loss"), "reward_accuracy": m.get("eval_accuracy"),
                         "reward_margin": m.get("eval_margin")}
    if cfg.lora:
        trainer.model = trainer.model.merge_and_unload()  # a plain classifier, usable as a voter
    trainer.model.save_pretrained(cfg.output_dir)
    tok.save_pretrained(cfg.output_dir)
    if cfg.whiten:  # over every training answer, chosen and rejected alike, with the merged final model
        r_c, r_r = score_pairs(trainer.model, tok, ds, cfg.max_length, cfg.batch_size)
        norm = save_reward_norm(cfg.output_dir, np.concatenate([r_c, r_r]), dataset=prov["dataset"])
        extra["reward_norm"] = {"mean": norm.mean, "std": norm.std, "texts": 2 * len(ds)}
    return common.write_model_card(cfg.output_dir, "reward", cfg, prov, trainer.state.log_history, extra)


def main(argv: list[str] | None = None) -> None:
    from trainers.cli import run_from_argv

    run_from_argv("reward", argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
