"""The two registries of trainers/: trainers by kind (trainers.registry), DPO-family losses by name
(trainers.losses.DPO_LOSSES). The CLI, the pipeline steps and DPOTrainConfig all derive from them."""

from __future__ import annotations

import pytest
import torch

from prefdata.errors import ConfigError
from prefdata.testing import run_cli
from trainers import losses, registry


def test_every_kind_names_a_module_with_config_and_train():
    from pydantic import BaseModel

    for kind in registry.KINDS:
        mod = registry.module(kind)
        assert callable(mod.train) and callable(mod.main), kind
        assert registry.config_class(kind) is mod.Config and issubclass(mod.Config, BaseModel), kind
        assert "dataset" in mod.Config.model_fields, kind


def test_an_unknown_kind_is_a_clear_error_everywhere(capsys):
    with pytest.raises(ConfigError, match=r"unknown trainer 'nope' \(known: sft, dpo, kto, orpo, reward, rrhf, pro, "
                                          r"armo\)"):
        registry.module("nope")
    code, _, err = run_cli(capsys, "train", "fields", "nope")
    assert code == 1 and "unknown trainer 'nope' (known: sft, dpo" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "train", "nope", "--dataset", "x@v1")
    assert code != 0


def test_pipeline_steps_and_cli_commands_come_from_the_registry():
    import prefdata.catalog  # noqa: F401  (declares the train_* steps)
    from prefdata import steps
    from trainers.cli import build_app

    declared = steps.registered()
    for kind, entry in registry.TRAINERS.items():
        assert declared[f"train_{kind}"].input == entry.reads
    assert declared["train_pro"].input == "completion" and declared["train_dpo"].input == "pair"
    commands = {c.name for c in build_app().registered_commands}
    assert commands == {*registry.KINDS, "fields"}


def test_dpo_config_choices_and_help_come_from_the_loss_registry():
    from trainers.dpo import DPOTrainConfig

    field = DPOTrainConfig.model_fields["loss"]
    assert set(field.annotation.__args__) == set(losses.DPO_LOSSES)
    for name, spec in losses.DPO_LOSSES.items():
        assert f"{name} ({spec.summary})" in field.description
        assert spec.fn is losses.get_loss(name) and set(spec.needs) | set(spec.optional) <= set(losses.PAIR_COLUMNS)
    assert [n for n, s in losses.DPO_LOSSES.items() if s.reference_free] == ["simpo"]
    assert losses.spec("soft").needs == ("label_prob",) and losses.spec("offset").needs == ("margin",)
    assert losses.spec("hinge").optional == ("label_prob",) and losses.spec("robust").trl == "robust"
    # A loss's config defaults apply only when the key is not given.
    assert DPOTrainConfig(dataset="x", loss="simpo").beta == 2.0
    assert DPOTrainConfig(dataset="x", loss="simpo", beta=0.5).beta == 0.5
    assert DPOTrainConfig(dataset="x", loss="sigmoid").beta == 0.1


def test_a_registered_loss_is_dispatched_by_name(monkeypatch):
    monkeypatch.setattr(losses, "DPO_LOSSES", dict(losses.DPO_LOSSES))

    @losses.loss("double", summary="test only", needs=("label_prob",))
    def double(h, *, beta, label_prob, **_):
        return 2 * label_prob * losses.sigmoid(h, beta=beta)

    h = torch.tensor([0.5, -1.0], dtype=torch.float64)
    got = losses.get_loss("double")(h, beta=0.1, label_prob=torch.ones(2, dtype=torch.float64))
    assert torch.allclose(got, 2 * losses.sigmoid(h, beta=0.1))
    with pytest.raises(ValueError, match="registered twice"):
        losses.loss("double", summary="again")(double)
    with pytest.raises(ValueError, match=r"unknown per-pair columns \['weight'\]"):
        losses.loss("weighted", summary="x", needs=("weight",))
