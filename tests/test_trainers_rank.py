"""RRHF and PRO on a tiny model: candidate groups from a candidates table, a version's side table and
pairs; the trainer's loss equal to the loss functions on independently computed log-probs; training
lowering the loss; the CLI, the card and the pipeline steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from prefdata import store
from prefdata.generators.self_reward import CANDIDATES
from prefdata.schema import validate
from prefdata.testing import run_cli
from trainers import losses


def msg(role, text):
    return [{"role": role, "content": text}]


def candidates(n_prompts=4, k=3, name="cands", extra_rows=()):
    rows = []
    for p in range(n_prompts):
        for i in range(k):
            rows.append({"id": f"c{p}-{i}", "prompt_id": f"p{p}", "prompt": msg("user", f"question {p}"),
                         "completion": msg("assistant", ("good " * (k - i)) + f"answer {p}"), "engine": "t",
                         "model": "m", "sampling": "{}", "finish_reason": "stop", "logprob": None,
                         "judgements": [], "judge_scores": [], "score": float(k - i), "filtered": None})
    rows += list(extra_rows)
    return store.commit(name, pa.Table.from_pylist(rows, schema=CANDIDATES), kind="completion")


def extra(pid, score, filtered=None, i=0):
    return {"id": f"x{pid}-{i}", "prompt_id": pid, "prompt": msg("user", f"extra {pid}"),
            "completion": msg("assistant", f"extra answer {i}"), "engine": "t", "model": "m", "sampling": "{}",
            "finish_reason": "stop", "logprob": None, "judgements": [], "judge_scores": [], "score": score,
            "filtered": filtered}


def test_groups_from_candidates_drop_unscored_filtered_and_unrankable(tmp_path):
    from trainers.ranking import load_groups
    from trainers.rrhf import RRHFTrainConfig

    v = candidates(n_prompts=2, k=3, extra_rows=[
        extra("p0", None), extra("p1", 9.0, filtered="empty", i=1),  # never used
        extra("q", 2.0, i=2), extra("q", 2.0, i=3),  # two candidates, one score: nothing to rank
    ])
    ds, _, counts = load_groups(RRHFTrainConfig(dataset=v.ref, max_candidates=2))
    assert counts["prompts"] == 2 and counts["prompts_without_two_scores"] == 1
    assert counts["candidates_unscored_or_filtered"] == 2 and counts["source"] == "candidates"
    g = ds[0]
    assert g["rewards"] == [3.0, 1.0]  # best first; max_candidates 2 keeps the best and the worst
    assert g["completions"][0][0]["content"].startswith("good good good")


def test_a_pair_version_brings_its_candidates_side_table():
    from trainers.pro import PROTrainConfig
    from trainers.ranking import load_groups

    side = candidates(n_prompts=3, k=4)
    pairs = [{"prompt": f"question {i}", "chosen": "a", "rejected": "b"} for i in range(3)]
    v = store.commit("sr", validate(pairs, "pair"), lineage={"side_tables": {"candidates": side.ref}})
    _, prov, counts = load_groups(PROTrainConfig(dataset=v.ref))
    assert counts["source"] == "candidates" and counts["candidates"] == 12
    assert prov["dataset"] == v.ref and prov["candidates"] == side.ref


def test_plain_pairs_are_groups_of_two_with_ties_dropped():
    from trainers.ranking import load_groups
    from trainers.rrhf import RRHFTrainConfig

    rows = [{"prompt": f"q {i}", "chosen": f"yes {i}", "rejected": f"no {i}", "label_prob": 0.5 if i == 0 else 0.9}
            for i in range(4)]
    ds, _, counts = load_groups(RRHFTrainConfig(dataset=store.commit("p", validate(rows, "pair")).ref))
    assert len(ds) == 3 and counts["ties"] == 1 and ds[0]["rewards"] == [1.0, 0.0]


def build(tiny_model, tmp_path, kind, **kw):
    """A RankTrainer on the toy candidates, built as `train` builds it (no training)."""
    from trainers import pro, rrhf
    from trainers.ranking import build_trainer

    mod = {"rrhf": rrhf, "pro": pro}[kind]
    cfg = mod.Config(dataset=candidates().ref, model=tiny_model, batch_size=2, output_dir=str(tmp_path / kind),
                     eval_fraction=0, **kw)
    trainer, tok, _, _ = build_trainer(cfg, kind, mod.LOSS, mod.loss_kwargs(cfg))
    return trainer, tok


@pytest.mark.parametrize("kind", ["rrhf", "pro"])
def test_trainer_loss_equals_the_loss_on_independent_logps(tiny_model, tmp_path, kind):
    trainer, _ = build(tiny_model, tmp_path, kind)
    batch = next(iter(trainer.get_train_dataloader()))
    # Independent log-probs: one candidate at a time, unpadded, full log-softmax (not the batched cross-entropy).
    model = trainer.model
    rows = trainer.train_dataset  # the dataloader's order is shuffled: map back through the token ids
    by_ids = {tuple(ids): (r, i) for r in rows for i, ids in enumerate(r["input_ids"])}
    b, k = batch["rewards"].shape
    logps, lengths = torch.zeros(b, k), torch.zeros(b, k)
    with torch.no_grad():
        for n, slot in enumerate(batch["slot"].tolist()):
            ids = batch["input_ids"][n][batch["attention_mask"][n].bool()].tolist()
            row, i = by_ids[tuple(ids)]
            p = row["prompt_len"][i]
            lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1], -1)
            tok_lp = lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])][p - 1:]  # completion tokens only
            logps.view(-1)[slot], lengths.view(-1)[slot] = tok_lp.sum(), len(ids) - p
        want = getattr(losses, kind)(logps, lengths, batch["rewards"], batch["valid"], **trainer.loss_kwargs).mean()
        got = trainer.compute_loss(model, dict(batch))
    assert got.item() == pytest.approx(want.item(), abs=1e-4)
    assert batch["valid"].sum() == 6  # 2 prompts x 3 candidates


@pytest.mark.parametrize("kind", ["rrhf", "pro"])
def test_training_lowers_the_loss(tiny_model, tmp_path, kind):
    from trainers import pro, rrhf

    mod = {"rrhf": rrhf, "pro": pro}[kind]
    cfg = mod.Config(dataset=candidates().ref, model=tiny_model, batch_size=4, max_steps=6, learning_rate=3e-3,
                     output_dir=str(tmp_path / kind), eval_fraction=0)
    card = mod.train(cfg)
    info = json.loads((card.parent / "prefdata-train.json").read_text())
    text = card.read_text()
    assert f"# {kind} model trained by prefdata" in text and (card.parent / "training_curves.png").is_file()
    res = info["result"]
    assert res["prompts"] == 4 and res["candidates"] == 12 and res["mean_candidates"] == 3.0
    assert (card.parent / "model.safetensors").is_file()
    assert (f"rank_weight: {cfg.rank_weight}" if kind == "rrhf" else "reward_temperature: true") in text
    curve = [v for _, v in info["curves"]["loss"]]  # per-step losses, the points the curves are drawn from
    assert len(curve) == 6 and curve[-1] < curve[0]


def test_rrhf_and_pro_from_the_cli_with_held_out_prompts(tiny_model, tmp_path, capsys):
    v = candidates(n_prompts=10, k=3)
    out = tmp_path / "rrhf"
    code, _, err = run_cli(capsys, "train", "rrhf", "--dataset", v.ref, "--model", tiny_model, "--output-dir",
                                out, "--set", "max_steps=1", "--set", "eval_fraction=0.2")
    assert code == 0, err
    held = json.loads((out / "prefdata-train.json").read_text())["result"]["eval"]
    assert held["groups"] == 2 and 0.0 <= held["rank_accuracy"] <= 1.0 and math.isfinite(held["loss"])
    assert "## Held-out evaluation (2 prompts)" in (out / "README.md").read_text()
    code, stdout, _ = run_cli(capsys, "train", "fields", "pro")
    assert code == 0 and "reward_temperature" in stdout and "T_i^k" in stdout


def test_nothing_to_rank_is_one_clear_error(tiny_model, capsys):
    v = candidates(n_prompts=0, extra_rows=[extra("q", 1.0, i=0), extra("q", 1.0, i=1)])
    code, _, err = run_cli(capsys, "train", "rrhf", "--dataset", v.ref, "--model", tiny_model)
    assert code != 0 and "nothing to rank" in err and "Traceback" not in err


def test_ranking_steps_are_registered():
    from prefdata.catalog import step_types

    types = step_types()
    assert types["train_rrhf"].config.__name__ == "RRHFTrainConfig" and types["train_rrhf"].output == "model"
    assert types["train_pro"].config.__name__ == "PROTrainConfig"
    assert types["train_armo"].config.__name__ == "ArmoTrainConfig"


def test_shipped_configs_load():
    from trainers.common import load_config
    from trainers.dpo import DPOTrainConfig
    from trainers.rrhf import RRHFTrainConfig

    root = Path(__file__).resolve().parents[1] / "trainers" / "configs"
    assert load_config(RRHFTrainConfig, str(root / "rrhf_self_reward.yaml")).max_candidates == 4
    simpo = load_config(DPOTrainConfig, str(root / "simpo.yaml"))
    assert simpo.loss == "simpo" and simpo.beta == 2.0
