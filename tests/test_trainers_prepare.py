"""Trainers' data preparation and held-out evaluation (issue 13, item 7: each fix with a test that fails
on the code before it): ties read as 0.5 by the soft losses and dropped by the hard ones, ODPO's
offset from the score gap, and the eval split's loss, accuracy and margin in the card.

The same issue's stop-string, judge-parsing and RLCD-Rescore fixes are tested in test_engines.py,
test_judges.py and test_generators.py."""

from __future__ import annotations

import pytest

# ----------------------------------------------------------------------------- ties


def _pairs(name, probs, **cols):
    """A store version whose label_prob column is exactly `probs` (None = null, as older RLCD-Rescore
    versions stored a tie; the readers would fill a null with 1.0)."""
    import pyarrow as pa

    from prefdata import store
    from prefdata.schema import validate

    rows = [{"prompt": f"question {i}", "chosen": f"a good answer {i}", "rejected": f"bad {i}",
             **{k: v[i] for k, v in cols.items()}} for i in range(len(probs))]
    t = validate(rows, "pair")
    t = t.set_column(t.schema.get_field_index("label_prob"), "label_prob", pa.array(probs, pa.float64()))
    return store.commit(name, t)


def test_dpo_soft_reads_a_null_tie_as_half_and_hard_losses_drop_ties(tiny_model, tmp_path):
    from trainers.dpo import DPOTrainConfig, prepare

    v = _pairs("ties", [1.0, None, 0.5, 0.8])
    soft = prepare(DPOTrainConfig(dataset=v.ref, model=tiny_model, loss="soft"))
    assert soft[0]["label_prob"] == [1.0, 0.5, 0.5, 0.8]
    for loss in ("sigmoid", "ipo"):
        hard = prepare(DPOTrainConfig(dataset=v.ref, model=tiny_model, loss=loss))
        assert [p[0]["content"] for p in hard[0]["prompt"]] == ["question 0", "question 3"]
        assert hard[-1]["ties"] == 2 and "dropped" in hard[-1]["ties_handling"]


def test_reward_soft_keeps_ties_at_half_and_hard_drops_them():
    import datasets

    from trainers.reward import RewardTrainConfig, prepare_pairs

    ds = datasets.Dataset.from_list([{"prompt": "q", "chosen": "a", "rejected": "b", "margin": 0.0, "label_prob": p}
                                     for p in (1.0, None, 0.5)])
    soft, _ = prepare_pairs(ds, RewardTrainConfig())
    assert soft["label_prob"] == [1.0, 0.5, 0.5]
    hard, note = prepare_pairs(ds, RewardTrainConfig(use_soft_labels=False))
    assert len(hard) == 1 and note["ties"] == 2


def test_kto_and_orpo_on_pairs_drop_ties_and_say_so_in_the_card(tiny_model, tmp_path):
    import json

    from trainers.kto import KTOTrainConfig
    from trainers.kto import train as train_kto
    from trainers.orpo import ORPOTrainConfig
    from trainers.orpo import train as train_orpo

    v = _pairs("kties", [1.0, None, 0.5, 0.9])
    card = train_kto(KTOTrainConfig(dataset=v.ref, model=tiny_model, max_steps=1, output_dir=str(tmp_path / "k")))
    res = json.loads((card.parent / "prefdata-train.json").read_text())["result"]
    assert res["ties"] == 2 and res["desirable_rows"] == 2 and res["undesirable_rows"] == 2
    card = train_orpo(ORPOTrainConfig(dataset=v.ref, model=tiny_model, max_steps=1, output_dir=str(tmp_path / "o")))
    res = json.loads((card.parent / "prefdata-train.json").read_text())["result"]
    assert res["ties"] == 2 and res["pairs"] == 2


# ----------------------------------------------------------------------------- ODPO offset


def test_odpo_offset_is_log_score_gap_even_when_margin_holds_the_raw_gap(tiny_model):
    import math

    from trainers.dpo import DPOTrainConfig, prepare

    # Self-reward pairs: margin = the raw rubric gap, scores on a 1..5 scale.
    n = 4
    v = _pairs("sr", [1.0] * n, chosen_score=[5.0, 4.0, 5.0, 3.0], rejected_score=[2.0, 2.0, 1.0, 2.0],
               margin=[3.0, 2.0, 4.0, 1.0])
    auto = prepare(DPOTrainConfig(dataset=v.ref, model=tiny_model, loss="offset"))
    assert auto[0]["margin"] == pytest.approx([math.log(3), math.log(2), math.log(4), 0.0])
    raw = prepare(DPOTrainConfig(dataset=v.ref, model=tiny_model, loss="offset", offset_source="margin"))
    assert raw[0]["margin"] == [3.0, 2.0, 4.0, 1.0]
    assert auto[-1]["offset_source"] == "scores" and raw[-1]["offset_source"] == "margin"


# ----------------------------------------------------------------------------- eval split


def test_dpo_eval_split_puts_eval_loss_accuracy_and_margin_in_the_card(tiny_model, tmp_path):
    import json
    import math

    from trainers.dpo import DPOTrainConfig, train

    v = _pairs("ev", [1.0] * 12)
    card = train(DPOTrainConfig(dataset=v.ref, model=tiny_model, max_steps=1, eval_fraction=0.25,
                                output_dir=str(tmp_path / "d")))
    res = json.loads((card.parent / "prefdata-train.json").read_text())["result"]
    assert res["eval"]["pairs"] == 3 and res["train_pairs"] == 9
    assert all(math.isfinite(res["eval"][k]) for k in ("loss", "reward_accuracy", "reward_margin"))
    assert math.isfinite(res["train_loss"])  # the training summary survives the evaluation row
    assert "Held-out evaluation (3 pairs)" in card.read_text()


def test_dpo_evaluate_with_predictions_does_not_crash(tiny_model, tmp_path):
    from prefdata import store
    from trainers.dpo import DPOTrainConfig, build_trainer, prepare

    v = _pairs("pl", [1.0] * 4)
    cfg = DPOTrainConfig(dataset=v.ref, model=tiny_model, output_dir=str(tmp_path / "o"), max_steps=1)
    trainer = build_trainer(cfg, *prepare(cfg))
    trainer.args.prediction_loss_only = False
    m = trainer.evaluate(store.load(v.ref).select_columns(["prompt", "chosen", "rejected"]))
    assert m["eval_loss"] > 0
    batch = next(iter(trainer.get_train_dataloader()))
    _, logits, _ = trainer.prediction_step(trainer.model, batch, prediction_loss_only=False)
    assert logits.shape == (2, 2)  # implicit rewards of chosen and rejected, per pair


def test_reward_eval_has_loss_and_margin(tiny_model, tmp_path):
    import json
    import math

    from trainers.reward import RewardTrainConfig, train

    v = _pairs("rm", [1.0] * 10, margin=[0.0] * 10)
    card = train(RewardTrainConfig(dataset=v.ref, model=tiny_model, max_steps=1, eval_fraction=0.2,
                                   output_dir=str(tmp_path / "r")))
    res = json.loads((card.parent / "prefdata-train.json").read_text())["result"]
    assert res["eval"]["pairs"] == 2 and all(math.isfinite(res["eval"][k]) for k in ("loss", "reward_margin"))
