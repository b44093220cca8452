"""Reward-model variants on a tiny model: centring equal to TRL's, GRM's SFT term equal to the base
causal LM's NLL on the chosen answer, whitening saved with the model and applied by the scorer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from prefdata import store
from prefdata.errors import PrefdataError
from prefdata.schema import validate


def pairs(n=8, name="rm-pairs"):
    rows = [{"prompt": f"question {i}", "chosen": f"a good answer {i}", "rejected": f"bad {i}", "label_prob": 0.9,
             "margin": 0.0} for i in range(n)]
    return store.commit(name, validate(rows, "pair"))


def test_centering_equals_trl_center_rewards_coefficient(tiny_model, tmp_path):
    from trl import RewardConfig, RewardTrainer

    from trainers.common import load_model_and_tokenizer
    from trainers.reward import PrefRewardTrainer, RewardCollator

    ds = store.load(pairs().ref).select_columns(["prompt", "chosen", "rejected"])
    model, tok, _ = load_model_and_tokenizer(tiny_model, seq_cls=True)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)  # rewards far from 0, so the penalty is large
    args = RewardConfig(output_dir=str(tmp_path / "r"), use_cpu=True, report_to=[], per_device_train_batch_size=4,
                        center_rewards_coefficient=0.05)
    theirs = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    mine = PrefRewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                             data_collator=RewardCollator(pad_token_id=tok.pad_token_id), center_coefficient=0.05)
    plain = PrefRewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                              data_collator=RewardCollator(pad_token_id=tok.pad_token_id))
    batch = next(iter(theirs.get_train_dataloader()))
    with torch.no_grad():
        a, b, c = (t.compute_loss(model, dict(batch)).item() for t in (theirs, mine, plain))
    assert a == pytest.approx(b, abs=1e-6)
    assert b - c > 1e-3  # the penalty is there


def test_grm_sft_term_is_the_causal_lm_nll_of_the_chosen_answer(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM
    from trl import RewardConfig

    from trainers.common import load_model_and_tokenizer
    from trainers.reward import (
        PrefRewardTrainer,
        RewardCollator,
        RewardTrainConfig,
        frozen_lm_head,
        prepare_pairs,
        prompt_lengths,
    )

    model, tok, path = load_model_and_tokenizer(tiny_model, seq_cls=True)
    cfg = RewardTrainConfig(dataset="x", use_margin=False, use_soft_labels=False, sft_coefficient=0.5)
    ds, _ = prepare_pairs(prompt_lengths(store.load(pairs().ref), tok), cfg)
    args = RewardConfig(output_dir=str(tmp_path / "r"), use_cpu=True, report_to=[], per_device_train_batch_size=2)
    trainer = PrefRewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                                data_collator=RewardCollator(pad_token_id=tok.pad_token_id), sft_coefficient=0.5,
                                lm_head=frozen_lm_head(path))
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       output_hidden_states=True).hidden_states[-1]
        got = trainer.chosen_nll(hidden, batch).item()
        # Independently: the base causal LM on each chosen text, NLL of the tokens after the prompt.
        lm = AutoModelForCausalLM.from_pretrained(path)
        nll, count = 0.0, 0
        for i in range(2):
            ids = batch["input_ids"][i][batch["attention_mask"][i].bool()]
            p = int(batch["prompt_len"][i])
            lp = torch.log_softmax(lm(input_ids=ids[None]).logits[0, :-1], -1)
            tgt = ids[1:]
            nll -= lp[torch.arange(len(tgt)), tgt][p - 1:].sum().item()
            count += len(tgt) - (p - 1)
    assert got == pytest.approx(nll / count, abs=1e-4)
    # prompt_len really is where the answer starts: the prompt's own tokens are the chosen text's prefix
    row = ds[0]
    full = tok(tok.apply_chat_template(row["prompt"] + row["chosen"], tokenize=False), add_special_tokens=False)
    head = tok(tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True),
               add_special_tokens=False)
    assert full["input_ids"][:row["prompt_len"]] == head["input_ids"]


def test_variants_train_end_to_end_and_whitening_is_applied_when_scoring(tiny_model, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trainers.reward import RewardTrainConfig, score_pairs, train
    from trainers.reward_norm import FILE, apply_reward_norm, load_reward_norm

    v = pairs()
    out = tmp_path / "rm"
    card = train(RewardTrainConfig(dataset=v.ref, model=tiny_model, output_dir=str(out), max_steps=2, whiten=True,
                                   center_rewards_coefficient=0.01, sft_coefficient=0.1, learning_rate=1e-3,
                                   eval_fraction=0))
    info = json.loads((card.parent / "prefdata-train.json").read_text())
    assert [v for _, v in info["curves"]["loss"]] and all(math.isfinite(x) for _, x in info["curves"]["loss"])
    assert all(math.isfinite(x) and x > 0 for _, x in info["curves"]["sft_nll"])  # GRM's term was trained
    norm = load_reward_norm(out)
    assert norm is not None and norm.std > 0 and info["result"]["reward_norm"]["texts"] == 16
    # Score the training answers again with the saved model: whitened, they have mean 0 and std 1.
    model = AutoModelForSequenceClassification.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    r_c, r_r = score_pairs(model, tok, store.load(v.ref), 512)
    w = apply_reward_norm(out, np.concatenate([r_c, r_r]))
    assert abs(w.mean()) < 1e-4 and w.std() == pytest.approx(1.0, abs=1e-4)
    assert np.array_equal(apply_reward_norm(tmp_path, r_c), r_c)  # no reward_norm.json: unchanged
    # The curation voter reads the same model on the same scale: its vote is the whitened difference.
    from prefdata.rewards.voters import RewardModelVoter, reward_model_votes

    [vote] = reward_model_votes(store.load_table(v.ref), RewardModelVoter(model=str(out)), progress=False).values()
    np.testing.assert_allclose(vote, (r_c - r_r) / norm.std, rtol=1e-4, atol=1e-4)
    (tmp_path / FILE).write_text('{"mean": 0, "std": 0}')
    with pytest.raises(PrefdataError, match="std > 0"):
        load_reward_norm(tmp_path)
