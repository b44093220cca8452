"""SimPO and hinge in PrefDPOTrainer on a tiny model: equal to TRL on the same batch, soft labels
reaching the loss, no reference model for SimPO, and a CLI run with its card."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from test_losses_rank import trl_cpo_loss
from test_trainers_dpo import nudge, one_batch, ours, toy

from prefdata import store
from prefdata.schema import validate
from prefdata.testing import run_cli


def test_hinge_equals_trl_dpo_hinge_on_the_same_batch(tiny_model, tmp_path):
    from trl import DPOConfig, DPOTrainer

    v = toy(label_prob=1.0)  # TRL has no per-pair label: compare on certain pairs
    mine = ours(tiny_model, tmp_path, loss="hinge", beta=2.0, version=v)
    nudge(mine.model, scale=0.05)
    args = DPOConfig(output_dir=str(tmp_path / "t"), use_cpu=True, report_to=[], loss_type="hinge", beta=2.0,
                     max_length=512, per_device_train_batch_size=2)
    theirs = DPOTrainer(model=copy.deepcopy(mine.model), ref_model=copy.deepcopy(mine.ref_model), args=args,
                        train_dataset=store.load(v.ref).select_columns(["prompt", "chosen", "rejected"]),
                        processing_class=mine.processing_class)
    batch = one_batch(mine)
    assert batch["label_prob"].tolist() == [1.0, 1.0]
    with torch.no_grad():
        a = mine.compute_loss(mine.model, dict(batch))
        b = theirs.compute_loss(theirs.model, {k: v for k, v in batch.items() if k != "label_prob"})
    assert abs(a.item() - 1.0) > 1e-4  # h != 0 (at h = 0 the hinge is exactly 1)
    assert a.item() == pytest.approx(b.item(), abs=1e-6)


def test_hinge_reads_label_prob(tiny_model, tmp_path):
    mine = ours(tiny_model, tmp_path, loss="hinge", beta=2.0)  # toy label_prob 0.55..0.9
    nudge(mine.model, scale=0.05)
    batch = one_batch(mine)
    assert (batch["label_prob"] < 1).all()
    with torch.no_grad():
        soft = mine.compute_loss(mine.model, dict(batch))
        hard = mine.compute_loss(mine.model, dict(batch, label_prob=torch.ones(2)))
    assert soft.item() != pytest.approx(hard.item(), abs=1e-4)


def test_simpo_is_reference_free_and_equals_trl_cpo_simpo(tiny_model, tmp_path):
    mine = ours(tiny_model, tmp_path, loss="simpo", simpo_gamma=0.3, version=toy(label_prob=1.0))
    assert mine.beta == 2.0 and mine.ref_model is None  # SimPO's default beta; TRL loaded no reference
    nudge(mine.model, scale=0.05)
    batch = one_batch(mine)
    # Mean completion log-probs computed here with a plain forward pass, not the trainer's fused head.
    with torch.no_grad():
        logits = mine.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        tok_lp = torch.log_softmax(logits.float(), -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        mask = batch["completion_mask"][:, 1:].float()
        mean = (tok_lp * mask).sum(1) / mask.sum(1)
        c, r = mean.chunk(2)
        want = trl_cpo_loss("simpo", c.double(), r.double(), beta=2.0, gamma=0.3).mean()
        got = mine.compute_loss(mine.model, dict(batch))
    assert got.item() == pytest.approx(want.item(), abs=1e-5)
    assert abs(got.item() - math.log1p(math.exp(0.3))) > 1e-4  # d != 0


def test_simpo_trains_from_the_cli_and_writes_its_card(tiny_model, tmp_path, capsys):
    rows = [{"prompt": f"question {i}", "chosen": f"a good answer {i}", "rejected": f"bad {i}",
             "label_prob": 0.5 if i == 0 else 0.9} for i in range(6)]  # one tie: kept at 0.5
    v = store.commit("simpo-toy", validate(rows, "pair"))
    out = tmp_path / "simpo"
    code, _, err = run_cli(capsys, "train", "dpo", "--dataset", v.ref, "--model", tiny_model, "--output-dir", out,
                                "--set", "loss=simpo", "--set", "max_steps=2", "--set", "learning_rate=5e-3")
    assert code == 0, err
    info = json.loads((out / "prefdata-train.json").read_text())
    assert info["config"]["loss"] == "simpo" and info["config"]["beta"] == 2.0
    assert info["result"]["ties"] == 1 and "kept" in info["result"]["ties_handling"]
    assert math.isfinite(info["result"]["train_loss"])
