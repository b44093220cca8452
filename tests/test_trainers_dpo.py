"""PrefDPOTrainer: equal to TRL where TRL has the loss, per-pair columns reaching the loss, the
soft-label identities on a real model, the reference log-prob cache, the TRL internals we rely on,
and end-to-end runs with card and curves."""

from __future__ import annotations

import copy
import inspect
import json
import math

import pytest
import torch

from prefdata import store
from prefdata.schema import validate


def toy(n=8, name="toy", **extra):
    rows = [{"prompt": f"question {i}", "chosen": f"a good answer {i}", "rejected": f"bad {i}",
             "label_prob": 0.55 + 0.05 * i, "margin": 0.1 * i, "chosen_score": 4.0, "rejected_score": 2.0, **extra}
            for i in range(n)]
    return store.commit(name, validate(rows, "pair"))


def nudge(model, seed=0, scale=0.02):
    """Move the policy off the reference so h != 0 (at h = 0 every variant is log 2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def ours(tiny_model, tmp_path, **kw):
    from trainers.dpo import DPOTrainConfig, build_trainer, prepare

    v = kw.pop("version", None) or toy()
    cfg = DPOTrainConfig(dataset=v.ref, model=tiny_model, output_dir=str(tmp_path / "o"), max_steps=1, **kw)
    return build_trainer(cfg, *prepare(cfg))


def one_batch(trainer):
    return next(iter(trainer.get_train_dataloader()))


def swap_halves(batch):
    """The same pairs with chosen and rejected exchanged: the batch is [chosen..., rejected...]."""
    out = dict(batch)
    for k in ("input_ids", "attention_mask", "completion_mask"):
        c, r = batch[k].chunk(2, dim=0)
        out[k] = torch.cat([r, c], dim=0)
    return out


# ----------------------------------------------------------------------------- against TRL


@pytest.mark.parametrize("loss,eps", [("sigmoid", 0.0), ("robust", 0.2), ("ipo", 0.0)])
def test_loss_equals_trl_on_the_same_batch(tiny_model, tmp_path, loss, eps):
    from trl import DPOConfig, DPOTrainer

    mine = ours(tiny_model, tmp_path, loss=loss, label_smoothing=eps)
    nudge(mine.model)
    args = DPOConfig(output_dir=str(tmp_path / "t"), use_cpu=True, report_to=[], loss_type=loss, beta=mine.beta,
                     label_smoothing=eps, max_length=512, per_device_train_batch_size=2)
    theirs = DPOTrainer(model=copy.deepcopy(mine.model), ref_model=copy.deepcopy(mine.ref_model), args=args,
                        train_dataset=store.load("toy@latest").select_columns(["prompt", "chosen", "rejected"]),
                        processing_class=mine.processing_class)
    batch = one_batch(mine)
    plain = {k: v for k, v in batch.items() if k not in ("label_prob", "margin")}
    with torch.no_grad():
        a = mine.compute_loss(mine.model, dict(batch))
        b = theirs.compute_loss(theirs.model, dict(plain))
    assert abs(a.item() - math.log(2)) > 1e-4  # h != 0, so the comparison means something
    assert a.item() == pytest.approx(b.item(), abs=1e-6)


# ----------------------------------------------------------------------------- per-pair columns


def test_label_prob_and_margin_reach_the_loss(tiny_model, tmp_path):
    mine = ours(tiny_model, tmp_path, loss="soft")
    batch = one_batch(mine)
    allowed = {round(0.55 + 0.05 * i, 6) for i in range(8)}
    assert {round(x, 6) for x in batch["label_prob"].tolist()} <= allowed
    off = ours(tiny_model, tmp_path, loss="offset", offset_source="margin", version=store.resolve("toy@latest"))
    assert {round(x, 6) for x in one_batch(off)["margin"].tolist()} <= {round(0.1 * i, 6) for i in range(8)}


def test_soft_label_zero_equals_training_on_the_swapped_pair(tiny_model, tmp_path):
    mine = ours(tiny_model, tmp_path, loss="soft")
    nudge(mine.model)
    batch = one_batch(mine)
    zero = dict(batch, label_prob=torch.zeros_like(batch["label_prob"]))
    one = dict(swap_halves(batch), label_prob=torch.ones_like(batch["label_prob"]))
    grads = []
    for b in (zero, one):
        mine.model.zero_grad()
        loss = mine.compute_loss(mine.model, b)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in mine.model.parameters() if p.grad is not None]))
    assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-6)
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(grads[0][1], grads[1][1]))


def test_soft_label_half_gives_zero_gradient_at_the_start(tiny_model, tmp_path):
    mine = ours(tiny_model, tmp_path, loss="soft")  # policy == reference: h = 0 for every pair
    batch = one_batch(mine)
    for p_label, zero in ((0.5, True), (0.9, False)):
        mine.model.zero_grad()
        mine.compute_loss(mine.model, dict(batch, label_prob=torch.full_like(batch["label_prob"], p_label))).backward()
        total = sum(p.grad.abs().sum().item() for p in mine.model.parameters() if p.grad is not None)
        assert (total == 0.0) == zero, (p_label, total)


# ----------------------------------------------------------------------------- reference cache


def test_cached_reference_logps_skip_the_reference_pass(tiny_model, tmp_path, monkeypatch):
    from trl import DPOTrainer

    from trainers.dpo import DPOTrainConfig, ref_cache_key, train

    calls = []
    real = DPOTrainer.compute_ref_log_probs

    def counting(self, model, inputs):
        calls.append(1)
        return real(self, model, inputs)

    monkeypatch.setattr(DPOTrainer, "compute_ref_log_probs", counting)
    v = toy()
    cfg = dict(dataset=v.ref, model=tiny_model, loss="soft", lora=True, precompute_ref_log_probs=True, max_steps=2,
               learning_rate=1e-3)
    train(DPOTrainConfig(**cfg, output_dir=str(tmp_path / "a")))
    first = len(calls)
    assert first > 0
    cached = list((store.home() / "refcache").glob("*.parquet"))
    assert len(cached) == 1
    sidecar = json.loads(cached[0].with_name(cached[0].name.split("-")[0] + ".json").read_text())
    assert sidecar["dataset_sha256"] == v.sha and sidecar["max_length"] == 512
    card = train(DPOTrainConfig(**cfg, output_dir=str(tmp_path / "b")))
    assert len(calls) == first  # second run: no reference forward at all
    assert (tmp_path / "b" / "adapter_model.safetensors").is_file()
    assert "LoRA adapter" in card.read_text()
    # the key moves with max_length and with the dataset content
    c1 = DPOTrainConfig(**cfg)
    prov = {"dataset": v.ref, "dataset_sha256": v.sha}
    k = ref_cache_key(c1, prov, tiny_model)
    assert k != ref_cache_key(DPOTrainConfig(**{**cfg, "max_length": 256}), prov, tiny_model)
    assert k != ref_cache_key(c1, {**prov, "dataset_sha256": "0" * 64}, tiny_model)
    # ...and with the rows kept: dropped ties or an eval split line up other rows with the cache
    assert k != ref_cache_key(c1, prov, tiny_model, {"ties_dropped": True, "eval": None})
    assert k != ref_cache_key(c1, prov, tiny_model, {"ties_dropped": False, "eval": [0.1, 0]})


# ----------------------------------------------------------------------------- TRL internals


def test_trl_internals_we_rely_on_are_still_there():
    """Fails loudly when a TRL upgrade moves what PrefDPOTrainer / PrefRewardTrainer override.
    pyproject pins trl>=1.16,<1.17; re-read trl/trainer/dpo_trainer.py before widening it."""
    import trl
    from transformers import Trainer
    from trl import DPOTrainer, RewardTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.reward_trainer import DataCollatorForPreference as RewardCollator

    assert tuple(int(x) for x in trl.__version__.split(".")[:2]) == (1, 16), trl.__version__
    sig = {name: list(inspect.signature(getattr(DPOTrainer, name)).parameters) for name in
           ("_compute_loss", "_set_signature_columns_if_needed", "_precompute_ref_logps", "compute_ref_log_probs")}
    assert sig == {"_compute_loss": ["self", "model", "inputs", "return_outputs"],
                   "_set_signature_columns_if_needed": ["self"],
                   "_precompute_ref_logps": ["self", "dataset", "name", "batch_size"],
                   "compute_ref_log_probs": ["self", "model", "inputs"]}
    # compute_loss must still delegate to _compute_loss, and the signature list must still be what
    # Trainer uses to drop columns.
    assert "self._compute_loss(" in inspect.getsource(DPOTrainer.compute_loss)
    init = inspect.getsource(DPOTrainer.__init__)
    for attr in ("self.beta =", "self.label_smoothing =", "self.precompute_ref_logps =", "self._metrics =",
                 "add_fused_lm_head("):
        assert attr in init, attr
    src = inspect.getsource(DPOTrainer._set_signature_columns_if_needed)
    assert '"prompt_ids"' in src and '"ref_chosen_logps"' in src
    assert "self._signature_columns" in inspect.getsource(Trainer._remove_unused_columns)
    fields = {f for f in DataCollatorForPreference.__dataclass_fields__}
    assert {"pad_token_id", "max_length"} <= fields and hasattr(DataCollatorForPreference, "torch_call")
    ref_src = inspect.getsource(DPOTrainer.compute_ref_log_probs)
    assert "fused_lm_head=True" in ref_src and "_non_model_keys" in ref_src
    # Reward: TRL keeps `margin` itself; we add `label_prob` the same way.
    assert '"margin"' in inspect.getsource(RewardTrainer._set_signature_columns_if_needed)
    assert '"margin"' in inspect.getsource(RewardCollator.torch_call)
    assert list(inspect.signature(RewardTrainer.compute_loss).parameters) == [
        "self", "model", "inputs", "return_outputs", "num_items_in_batch"]


# ----------------------------------------------------------------------------- end to end


def test_dpo_soft_trains_from_a_version_and_writes_card_and_curves(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from trainers.dpo import DPOTrainConfig, train

    v = toy()
    card = train(DPOTrainConfig(dataset=v.ref, model=tiny_model, loss="soft", max_steps=2, learning_rate=5e-3,
                                output_dir=str(tmp_path / "soft")))
    text = card.read_text()
    assert f"`{v.ref}`" in text and v.sha in text and "loss: soft" in text and "beta: 0.1" in text
    assert (card.parent / "training_curves.png").stat().st_size > 1000
    info = json.loads((card.parent / "prefdata-train.json").read_text())
    assert info["dataset"] == v.ref and info["dataset_sha256"] == v.sha
    assert math.isfinite(info["result"]["train_loss"])
    before = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    after = AutoModelForCausalLM.from_pretrained(card.parent).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_dpo_hard_losses_train_end_to_end(tiny_model, tmp_path, loss):
    # Kept from the removed tests/test_trainers.py: each hard loss really moves the weights.
    from transformers import AutoModelForCausalLM

    from trainers.dpo import DPOTrainConfig, train

    card = train(DPOTrainConfig(dataset=toy().ref, model=tiny_model, loss=loss, max_steps=1, learning_rate=5e-3,
                                output_dir=str(tmp_path / loss)))
    assert f"loss: {loss}" in card.read_text()
    before = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    after = AutoModelForCausalLM.from_pretrained(card.parent).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_dpo_offset_from_a_parquet_file_uses_score_gaps(tiny_model, tmp_path):
    import numpy as np

    from prefdata import io
    from trainers.dpo import DPOTrainConfig, prepare, train

    rows = [{"prompt": f"q {i}", "chosen": f"fine answer {i}", "rejected": f"no {i}", "chosen_score": 3.0 + i,
             "rejected_score": 1.0} for i in range(6)]
    path = io.write(validate(rows, "pair"), tmp_path / "pairs.parquet")
    cfg = DPOTrainConfig(dataset=str(path), model=tiny_model, loss="offset", offset_alpha=0.5, max_steps=3,
                         learning_rate=5e-3, output_dir=str(tmp_path / "off"))
    ds = prepare(cfg)[0]
    assert sorted(ds["margin"]) == pytest.approx(sorted(np.log([2.0 + i for i in range(6)])))
    card = train(cfg)
    info = json.loads((card.parent / "prefdata-train.json").read_text())
    assert info["dataset"] == str(path.resolve()) and len(info["dataset_sha256"]) == 64
    assert math.isfinite(info["result"]["train_loss"])
