"""Issue 13, item 7: each correctness fix with a test that fails on the code before it."""

from __future__ import annotations

import pytest

from prefdata.engines.base import ChatRequest, SamplingParams

# ----------------------------------------------------------------------------- stop strings


def test_stop_string_logprob_and_num_tokens_count_only_the_kept_text(tiny_model):
    from prefdata.engines import EngineConfig
    from prefdata.engines.transformers import TransformersEngine

    eng = TransformersEngine(EngineConfig(model=tiny_model, cache=False, progress=False))
    req = ChatRequest(messages=[{"role": "user", "content": "Tell me about bread."}])
    # Sampled (the greedy tiny model repeats one token); every row has its own seeded stream, so a
    # shorter max_tokens yields a prefix of the same tokens.
    sp = {"temperature": 1.0, "seed": 3, "logprobs": True}
    prefixes = [eng.generate_samples([(req, 0)], SamplingParams(max_tokens=j, **sp))[0] for j in range(1, 25)]
    full = prefixes[-1]
    assert full.num_tokens == 24
    texts = [""] + [c.text for c in prefixes]  # texts[j]: the text of the first j tokens
    # A stop string made of tokens m+1..m+2, printable and first seen right there.
    m = next(m for m in range(4, 22) if not texts[m].endswith("\ufffd")
             and (piece := texts[m + 2][len(texts[m]):]).isprintable() and piece.strip()
             and "\ufffd" not in piece and full.text.find(piece) == len(texts[m]))
    stop = texts[m + 2][len(texts[m]):]
    [cut] = eng.generate_samples([(req, 0)], SamplingParams(max_tokens=24, stop=(stop,), **sp))
    assert cut.text == texts[m] and cut.finish_reason == "stop"
    assert cut.num_tokens <= m  # the stop string's own tokens are not counted
    # The counted tokens are exactly those that make the text, and the log-prob is theirs.
    assert texts[cut.num_tokens] == cut.text or len(texts[cut.num_tokens]) >= len(cut.text)
    assert cut.logprob == pytest.approx(prefixes[cut.num_tokens - 1].logprob, abs=1e-5)


# ----------------------------------------------------------------------------- judge parsing


@pytest.mark.parametrize("text,want", [
    ("Winner: a tie", "tie"), ("Winner: A tie.", "tie"), ("Winner: it's a tie", "tie"), ("Winner: draw", "tie"),
    ("Winner: neither", "tie"), ("Winner: A and B", None), ("Winner: A/B", None), ("Winner: Assistant B", "b"),
    ("Winner: A", "a"), ("Winner: a, it is clearer", "a"), ("**Winner:** B.", "b"),
])
def test_winner_edge_cases(text, want):
    from prefdata.judges.pairwise import parse_winner

    assert parse_winner(text) == want


@pytest.mark.parametrize("cont,want", [("3-4", None), ("3 - 4", None), ("3\u20134", None), ("3 to 4", None),
                                       ("3 or 4", None), ("3/4", None), ("4/5", 4.0), ("3-star answer", 3.0),
                                       ("4 out of 5", 4.0)])
def test_score_ranges_are_not_scores(cont, want):
    from prefdata.judges.pointwise import parse_score, parse_score_first

    assert parse_score_first(cont) == want
    assert parse_score(f"Score: {cont}") in (want, None)  # the line form is stricter still
    assert parse_score("Score: 3-4") is None


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


def test_rlcd_rescore_tie_is_half_not_null():
    from prefdata.engines.scripted import ScriptedEngine
    from prefdata.generators.rlcd import rescore

    rows = [{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "x"}],
             "rejected": [{"role": "assistant", "content": "y"}], "label_prob": 1.0, "meta": {}}]
    rescore(rows, ScriptedEngine(["Winner: A"]), seed=0)  # A in both orders: the verdict follows the position
    assert rows[0]["meta"]["rescore"] == "tie" and rows[0]["label_prob"] == 0.5


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
