"""Reward, SFT (incl. the BPO rewriter), KTO and ORPO end to end on a tiny model; the CLI; configs;
and every bad input rejected before training starts."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pytest
import torch

from prefdata import io, store
from prefdata.errors import ConfigError, PrefdataError
from prefdata.schema import validate


def pairs(n=8, name="pairs", **extra):
    rows = [{"prompt": f"question {i}", "chosen": f"a good answer {i}", "rejected": f"bad {i}",
             "label_prob": 0.9, "margin": 0.25 * (i % 3), **extra} for i in range(n)]
    return store.commit(name, validate(rows, "pair"))


def card_ok(card, ref_or_path):
    text = card.read_text()
    assert ref_or_path in text and "## Config" in text
    assert (card.parent / "training_curves.png").is_file()
    result = json.loads((card.parent / "prefdata-train.json").read_text())["result"]
    assert math.isfinite(result["train_loss"])
    return result


# ----------------------------------------------------------------------------- reward


def test_reward_margin_matches_trl_reward_trainer(tiny_model, tmp_path):
    from trl import RewardConfig, RewardTrainer

    from trainers.common import load_model_and_tokenizer
    from trainers.reward import PrefRewardTrainer, RewardCollator

    ds = store.load(pairs().ref).select_columns(["prompt", "chosen", "rejected", "margin"])
    model, tok, _ = load_model_and_tokenizer(tiny_model, seq_cls=True)
    with torch.no_grad():  # a random head gives r_c != r_r, so the margin matters
        model.score.weight.normal_(0, 1.0)
    args = RewardConfig(output_dir=str(tmp_path / "r"), use_cpu=True, report_to=[], per_device_train_batch_size=4)
    theirs = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    mine = PrefRewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                             data_collator=RewardCollator(pad_token_id=tok.pad_token_id))
    batch = next(iter(theirs.get_train_dataloader()))
    assert "margin" in batch and batch["margin"].abs().sum() > 0
    with torch.no_grad():
        a = theirs.compute_loss(model, dict(batch))
        b = mine.compute_loss(model, dict(batch))
        c = mine.compute_loss(model, dict(batch, label_prob=torch.ones_like(batch["margin"])))
        d = theirs.compute_loss(model, {k: v for k, v in batch.items() if k != "margin"})
    assert a.item() == pytest.approx(b.item(), abs=1e-6) and a.item() == pytest.approx(c.item(), abs=1e-6)
    assert a.item() != pytest.approx(d.item(), abs=1e-6)


def test_reward_trains_and_is_an_hf_reward_model(tiny_model, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trainers.reward import RewardTrainConfig, train

    v = pairs(12)
    card = train(RewardTrainConfig(dataset=v.ref, model=tiny_model, max_steps=2, eval_fraction=0.2,
                                   learning_rate=1e-3, output_dir=str(tmp_path / "rm")))
    res = card_ok(card, v.ref)
    assert 0.0 <= res["heldout_pairwise_accuracy"] <= 1.0 and res["heldout_pairs"] >= 2
    rm = AutoModelForSequenceClassification.from_pretrained(card.parent)
    tok = AutoTokenizer.from_pretrained(card.parent)
    assert rm.config.num_labels == 1 and tok.pad_token_id is not None
    with torch.no_grad():
        assert rm(**tok(["hello there"], return_tensors="pt")).logits.shape == (1, 1)


# ----------------------------------------------------------------------------- sft / kto / orpo


def test_sft_on_pairs_and_bpo_rewriter_from_a_file(tiny_model, tmp_path):
    from trainers.sft import SFTTrainConfig, to_prompt_completion, train

    v = pairs()
    card_ok(train(SFTTrainConfig(dataset=v.ref, model=tiny_model, max_steps=1, output_dir=str(tmp_path / "s"))), v.ref)
    bpo = tmp_path / "bpo.jsonl"
    bpo.write_text("".join(json.dumps({"prompt": f"tell me about {w}", "optimized_prompt":
                                       f"Explain {w} in three clear sentences for a beginner."}) + "\n"
                           for w in ("bread", "foxes", "the sky", "rivers")))
    import datasets

    ds = to_prompt_completion(datasets.Dataset(io.read(str(bpo))), "auto")  # picks optimized_prompt
    assert ds[0]["completion"][0]["content"].startswith("Explain bread")
    assert "tell me about bread" in ds[0]["prompt"][0]["content"]
    card = train(SFTTrainConfig(dataset=str(bpo), model=tiny_model, max_steps=2, learning_rate=1e-3,
                                output_dir=str(tmp_path / "bpo")))
    card_ok(card, str(bpo.resolve()))


def test_kto_on_unpaired_rows_with_weight_band(tiny_model, tmp_path):
    from trainers.kto import KTOTrainConfig, balanced_weights, train

    assert balanced_weights(10, 10, 1.0, 1.0)[2] is None
    w_d, w_u, note = balanced_weights(10, 30, 1.0, 1.0)
    assert note and w_d * 10 / (w_u * 30) == pytest.approx(1.0)
    w_d, _, note = balanced_weights(30, 10, 1.0, 1.0)
    assert w_d * 30 / 10 == pytest.approx(4 / 3)
    assert balanced_weights(30, 10, 1.0, 1.0, adjust=False)[0] == 1.0
    rows = [{"prompt": f"q {i}", "completion": f"answer {i}", "label": i % 4 != 0} for i in range(8)]  # 6 D, 2 U
    path = io.write(validate(rows, "unpaired"), tmp_path / "fb.jsonl")
    card = train(KTOTrainConfig(dataset=str(path), model=tiny_model, max_steps=1, output_dir=str(tmp_path / "k")))
    res = card_ok(card, str(path.resolve()))
    assert res["desirable_rows"] == 6 and res["desirable_weight_used"] == pytest.approx(4 / 3 * 2 / 6)
    assert "outside the recommended" in res["weight_note"]


def test_kto_and_orpo_on_pairs(tiny_model, tmp_path):
    from trainers import kto, orpo

    v = pairs()
    res = card_ok(kto.train(kto.KTOTrainConfig(dataset=v.ref, model=tiny_model, max_steps=1,
                                               output_dir=str(tmp_path / "k"))), v.ref)
    assert res["desirable_rows"] == res["undesirable_rows"] == 8 and res["weight_note"] is None
    card_ok(orpo.train(orpo.ORPOTrainConfig(dataset=v.ref, model=tiny_model, max_steps=1,
                                            output_dir=str(tmp_path / "o"))), v.ref)


# ----------------------------------------------------------------------------- CLI and config


def test_cli_train_dpo_with_yaml_and_set(tiny_model, tmp_path):
    from typer.testing import CliRunner

    from prefdata.cli import _mount, app

    _mount()
    v = pairs()
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text("loss: soft\nbeta: 0.2\nlora: true\nmax_steps: 1\n")
    res = CliRunner().invoke(app, ["train", "dpo", "--dataset", v.ref, "--model", tiny_model, "--config", str(cfg),
                                   "--set", "beta=0.3", "--output-dir", str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    assert "card:" in res.output
    info = json.loads((tmp_path / "cli" / "prefdata-train.json").read_text())
    assert info["config"]["beta"] == 0.3 and info["config"]["loss"] == "soft" and info["adapter"]
    assert (tmp_path / "cli" / "adapter_model.safetensors").is_file()


def test_config_errors_name_file_and_key(tmp_path):
    from trainers.common import load_config
    from trainers.dpo import DPOTrainConfig
    from trainers.reward import RewardTrainConfig

    bad = tmp_path / "bad.yaml"
    bad.write_text("loss: soft\nbetta: 0.2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'betta'"):
        load_config(DPOTrainConfig, str(bad))
    with pytest.raises(ConfigError, match=r"--set: 'label_smoothing': Input should be less than 0.5"):
        load_config(DPOTrainConfig, None, ["label_smoothing=0.7"])
    with pytest.raises(ConfigError, match=r"--set: 'loss'"):
        load_config(DPOTrainConfig, None, ["loss=hing"])  # hinge is a loss now; a typo is not
    with pytest.raises(ConfigError, match=r"--set: 'eval_fraction'"):
        load_config(RewardTrainConfig, None, ["eval_fraction=0.9"])
    cfg = load_config(DPOTrainConfig, None, ["beta=0.5"], dataset="x@v1")
    assert cfg.beta == 0.5 and cfg.dataset == "x@v1"
    for name, f in DPOTrainConfig.model_fields.items():
        assert f.description, f"{name} has no description"


def test_cpu_safe_defaults():
    from trainers.common import training_args_common
    from trainers.dpo import DPOTrainConfig

    args = training_args_common(DPOTrainConfig(gradient_checkpointing=True, bf16=True))
    if not torch.cuda.is_available():
        assert args["use_cpu"] and not args["bf16"] and not args["gradient_checkpointing"]


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_rejected_before_training(tiny_model, tmp_path):
    from trainers.dpo import DPOTrainConfig, prepare
    from trainers.reward import RewardTrainConfig
    from trainers.reward import train as train_rm

    plain = pairs(2, name="plain")
    t = store.load_table(plain.ref)
    # missing columns for the chosen loss
    with pytest.raises(PrefdataError, match="lacks column.*label_prob.*loss=soft"):
        prepare(DPOTrainConfig(dataset=store.commit("nolp", t.drop(["label_prob"])).ref, model=tiny_model,
                               loss="soft"))
    with pytest.raises(PrefdataError, match="lacks column.*margin"):
        train_rm(RewardTrainConfig(dataset=store.commit("nom", t.drop(["margin"])).ref, model=tiny_model))
    unp = store.commit("unp", validate([{"prompt": "q", "completion": "a", "label": True}], "unpaired"),
                       kind="unpaired")
    with pytest.raises(PrefdataError, match="lacks column.*chosen, rejected"):
        prepare(DPOTrainConfig(dataset=unp.ref, model=tiny_model))
    with pytest.raises(PrefdataError, match="score"):  # offset with neither margins nor scores
        prepare(DPOTrainConfig(dataset=store.commit("nosc", t.drop(["margin"])).ref, model=tiny_model,
                               loss="offset"))
    # label_prob outside [0, 1]: a store version and a file
    bad = t.set_column(t.schema.get_field_index("label_prob"), "label_prob", pa.array([0.5, 1.5]))
    with pytest.raises(PrefdataError, match=r"row 2, field 'label_prob'"):
        prepare(DPOTrainConfig(dataset=store.commit("badlp", bad).ref, model=tiny_model, loss="soft"))
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b", "label_prob": -0.1}) + "\n")
    with pytest.raises(PrefdataError, match="label_prob"):
        prepare(DPOTrainConfig(dataset=str(f), model=tiny_model, loss="soft"))
    # every example longer than max_length
    with pytest.raises(PrefdataError, match="every example is longer than max_length=6"):
        prepare(DPOTrainConfig(dataset=plain.ref, model=tiny_model, max_length=6))
    # no dataset at all
    with pytest.raises(PrefdataError, match="no dataset"):
        prepare(DPOTrainConfig(model=tiny_model))


def test_tokenizer_without_chat_template(tiny_model, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    from trainers.dpo import DPOTrainConfig, prepare
    from trainers.sft import SFTTrainConfig
    from trainers.sft import train as train_sft

    d = tmp_path / "nochat"
    shutil.copytree(tiny_model, d)
    tok = AutoTokenizer.from_pretrained(d)
    tok.chat_template = None
    tok.save_pretrained(d)
    (d / "chat_template.jinja").unlink(missing_ok=True)
    v = pairs()
    with pytest.raises(PrefdataError, match="no chat template"):
        prepare(DPOTrainConfig(dataset=v.ref, model=str(d)))
    with pytest.raises(PrefdataError, match="no chat template"):
        train_sft(SFTTrainConfig(dataset=v.ref, model=str(d), output_dir=str(tmp_path / "never")))
    assert not (tmp_path / "never").exists()
