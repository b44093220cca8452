"""The fine-tuned reward-model family on a tiny random Llama: held out by construction (checked on the
texts each fold's model actually trained on and scored), grouped folds, and learning a polite-vs-rude
toy set well enough to point at injected flips."""

from __future__ import annotations

import numpy as np
import pytest

from prefdata.rewards import finetuned
from prefdata.rewards.finetuned import FinetunedRMVoter, finetuned_heldout_accuracy, finetuned_votes
from prefdata.schema import validate

TOPICS = ["bread", "tea", "rain", "maps", "chess", "bikes", "owls", "salt", "glue", "kites", "jazz", "moss",
          "tides", "wool", "clay", "ink", "frost", "corn", "silk", "bees", "lamps", "reefs", "dunes", "ferns",
          "gears", "hats", "ice", "jade", "kelp", "lava", "mint", "nuts", "oaks", "pens", "quilts", "rice",
          "soap", "tin", "vans", "wax", "yarn", "zinc", "ants", "bats", "cats", "dogs"]
FLIPS = (5, 17, 29, 33)


def toy(topics, flips=()):
    """Polite chosen, rude rejected; the rude answer is a little longer, so a length prior points the
    wrong way. One topic per pair, so answers are distinct. The first ten pairs come in twos that share a prompt, which
    must keep each two in one fold."""
    rows = []
    for i, t in enumerate(topics):
        prompt = f"Tell me about {topics[i - i % 2]}." if i < 10 else f"Tell me about {t}."
        c = f"Thank you for asking! Here is a kind, careful note on {t}."
        r = f"Ugh, {t}? What a dull, stupid, pointless question. Go away."
        rows.append({"prompt": prompt, "chosen": r if i in flips else c, "rejected": c if i in flips else r})
    return validate(rows, "pair")


def spec(model, **kw):
    return FinetunedRMVoter(model=model, max_steps=10, learning_rate=1e-3, batch_size=8, max_length=128, **kw)


def texts(table):
    return {m["content"] for col in ("prompt", "chosen", "rejected") for msgs in table.column(col).to_pylist()
            for m in msgs}


def test_spec_and_family_name():
    s = FinetunedRMVoter()
    assert s.model == "HuggingFaceTB/SmolLM2-135M-Instruct" and s.folds == 2 and s.lora
    assert finetuned.family_name(s) == "ftrm:SmolLM2-135M-Instruct"
    assert finetuned.family_name(FinetunedRMVoter(model="/x/ckpt-3/")) == "ftrm:ckpt-3"  # no ':<int>' head tail
    with pytest.raises(ValueError):
        FinetunedRMVoter(folds=1)
    with pytest.raises(ValueError):
        FinetunedRMVoter(max_steps=0)
    with pytest.raises(ValueError):
        FinetunedRMVoter(lora_r=4)  # unknown keys are refused


def test_cross_fit_is_held_out_grouped_and_learns(tiny_model, monkeypatch):
    table = toy(TOPICS[:40], flips=FLIPS)
    seen = []  # (texts trained on, texts scored) per fold, from the calls themselves
    real_train, real_score = finetuned._train, finetuned._score
    monkeypatch.setattr(finetuned, "_train", lambda t, *a, **k: (seen.append([texts(t)]), real_train(t, *a, **k))[1])
    monkeypatch.setattr(finetuned, "_score", lambda t, *a, **k: (seen[-1].append(texts(t)), real_score(t, *a, **k))[1])

    fit = finetuned.finetuned_cross_fit(table, spec(tiny_model), seed=0, progress=False)

    assert fit.scores.shape == (40,) and np.isfinite(fit.scores).all()
    assert set(np.unique(fit.fold_of)) == {0, 1}
    for f, trained in enumerate(fit.trained_on):  # no model scores a pair from its own training set
        assert not np.isin(trained, np.flatnonzero(fit.fold_of == f)).any()
    assert len(seen) == 2 and all(not (tr & sc) for tr, sc in seen)  # not even a shared prompt or answer text
    assert all(fit.fold_of[i] == fit.fold_of[i + 1] for i in range(0, 10, 2))  # shared-prompt twos together
    truth = np.where(np.isin(np.arange(40), FLIPS), -1.0, 1.0)
    assert np.mean(np.sign(fit.scores) == truth) >= 0.75  # learns politeness, so flips score negative
    from prefdata.store import safe_path

    assert not any(safe_path("cache", "finetuned-rm").iterdir())  # fold models deleted

    votes = finetuned_votes(table, spec(tiny_model, subset=8, folds=3), seed=1, progress=False)
    assert list(votes) == [finetuned.family_name(spec(tiny_model))]  # one family, not one name per fold
    assert np.isfinite(next(iter(votes.values()))).all()


def test_heldout_accuracy_uses_soft_labels(tiny_model, monkeypatch):
    soft = []
    real_train = finetuned._train
    monkeypatch.setattr(finetuned, "_train", lambda *a, **k: (soft.append(k["soft"]), real_train(*a, **k))[1])
    acc = finetuned_heldout_accuracy(toy(TOPICS[:30]), toy(TOPICS[30:46]), spec(tiny_model), seed=0)
    assert soft == [True] and 0.0 <= acc <= 1.0
    assert acc >= 0.75  # the toy set is easy; a random model sits near 0.5
