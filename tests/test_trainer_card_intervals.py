"""Trainer cards give held-out accuracies with an interval, and say when the held-out set is small."""

from __future__ import annotations

import pytest

from trainers.card import wilson, write_model_card
from trainers.dpo import DPOTrainConfig


def test_wilson_by_hand():
    lo, hi = wilson(1.0, 7)  # 7 of 7 right: z^2 = 2.7055; centre = (1 + z^2/14) / (1 + z^2/7)
    assert hi == 1.0 and lo == pytest.approx((1 + 2.7055 / 14 - 1.6449 * (2.7055 / 196) ** 0.5) / (1 + 2.7055 / 7), abs=1e-3)
    lo, hi = wilson(0.5, 100)
    assert lo == pytest.approx(0.4188, abs=1e-3) and hi == pytest.approx(0.5812, abs=1e-3)


def test_small_held_out_set_reads_as_an_interval(tmp_path):
    cfg = DPOTrainConfig(dataset="x.jsonl", output_dir=str(tmp_path))
    card = write_model_card(str(tmp_path), "dpo", cfg, {"dataset": "x.jsonl"}, [{"loss": 0.6, "step": 1}],
                            {"eval": {"pairs": 7, "reward_accuracy": 1.0, "loss": 0.5}})
    text = card.read_text()
    assert "| reward_accuracy | 1.0000 (90% interval 0.72 – 1.00) |" in text
    assert "Only 7 held-out pairs: read the accuracy by its interval" in text
    assert "| loss | 0.5000 |" in text


def test_trainer_set_overrides_go_through_the_one_config_loader():
    from prefdata.errors import ConfigError
    from trainers.common import load_config

    cfg = load_config(DPOTrainConfig, None, ["beta=0.2", "max_steps=3"], dataset="x.jsonl")
    assert cfg.beta == 0.2 and cfg.max_steps == 3
    # A dotted key is a nested key, as in pipelines (it used to become a literal key "nope.x").
    with pytest.raises(ConfigError, match=r"--set: unknown key 'nope' \(known: .*beta"):
        load_config(DPOTrainConfig, None, ["nope.x=1"], dataset="x.jsonl")
    with pytest.raises(ConfigError, match="--set expects key=value"):
        load_config(DPOTrainConfig, None, ["beta"], dataset="x.jsonl")
