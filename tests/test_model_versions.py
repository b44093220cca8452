"""Trained models as versions: `name@vN` / `name@latest` name a stamped model folder, with a content
hash over its files; unfinished folders (no stamp) are not versions."""

from __future__ import annotations

import json
import time

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
