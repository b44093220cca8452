"""Trained models as versions: `name@vN` / `name@latest` name a stamped model folder, with a content
hash over its files; unfinished folders (no stamp) are not versions."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from prefdata import artifacts, store
from prefdata.errors import PrefdataError
from prefdata.models import resolve_model
from prefdata.testing import run_cli as cli


def _train(name: str, fp: str, weights: bytes, created: float) -> artifacts.Artifact:
    where = artifacts.folder(store.home(), "model", name, fp)
    artifacts.fresh(where)
    (where / "model").mkdir()
    (where / "model" / "config.json").write_text("{}")
    (where / "model" / "model.safetensors").write_bytes(weights)
    manifest = {"kind": "model", "name": name, "created": created,
                "lineage": {"parents": [f"data@v{fp[-1]}"], "step": {"uses": "train_dpo"}}, "metrics": {"loss": 0.5}}
    return artifacts.stamp(where, "model", manifest, "# card\n")


def test_versions_are_numbered_in_stamp_order_and_resolve(capsys):
    now = time.time()
    b = _train("pol", "fp-b2", b"second", now)          # folder names sort the other way round
    a = _train("pol", "fp-a1", b"first", now - 60)
    half = artifacts.folder(store.home(), "model", "pol", "fp-c3")  # killed mid-training: no stamp
    (half / "model").mkdir(parents=True)
    (half / "model" / "config.json").write_text("{}")

    assert resolve_model("pol@v1") == a.ref and resolve_model("pol@v2") == b.ref
    assert resolve_model("pol@latest") == b.ref
    assert a.manifest["content_sha256"] != b.manifest["content_sha256"]
    assert a.manifest["content_sha256"] == artifacts.content_hash(a.path / "model")
    with pytest.raises(PrefdataError, match=r"v1\.\.v2, not v3"):
        resolve_model("pol@v3")
    with pytest.raises(PrefdataError, match="no trained model named 'nope'.*pol"):
        resolve_model("nope@latest")

    code, out, err = cli(capsys, "models", "list", "--json")
    assert code == 0, err
    trained = json.loads(out)["trained"]
    assert [t["ref"] for t in trained] == ["pol@v1", "pol@v2"]
    assert trained[0]["parents"] == ["data@v1"] and trained[0]["content_sha256"] == a.manifest["content_sha256"]
    assert trained[1]["path"] == b.ref and trained[1]["uses"] == "train_dpo"


def test_a_lora_adapter_named_as_a_model_is_merged_once_on_load(tiny_model):
    """An adapter folder (what `prefdata train dpo --lora` leaves) works as an engine model: merged into
    its base once, cached by content; the merged weights give the adapted model's logits."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from prefdata.engines import ChatRequest, get_engine

    adapter = store.home() / "my-adapter"
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(adapter)  # adapter_config.json names tiny_model as its base

    merged = resolve_model(str(adapter))
    assert merged != str(adapter) and (store.home() / "models" / "merged") in Path(merged).parents
    mtime = (Path(merged) / "config.json").stat().st_mtime_ns
    assert resolve_model(str(adapter)) == merged  # cached: not merged again
    assert (Path(merged) / "config.json").stat().st_mtime_ns == mtime

    ids = torch.tensor([[1, 5, 9, 3]])
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                                    str(adapter)).eval()
    plain = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    got = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    with torch.no_grad():
        want, other, have = ref(ids).logits, plain(ids).logits, got(ids).logits
    assert torch.allclose(have, want, atol=1e-4) and not torch.allclose(have, other, atol=1e-3)

    eng = get_engine({"model": str(adapter), "cache": False, "progress": False})
    [s] = eng.score([ChatRequest(messages=[{"role": "user", "content": "hi"}])], ["hello"])
    assert s < 0.0
