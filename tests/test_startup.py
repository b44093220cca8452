"""Startup cost: loading the step catalog and validating pipelines must not import torch.

`prefdata run` loads the catalog and checks every step's config before any step runs; importing
torch there cost ~12 s and ~300 MiB on every run, API-only pipelines included. The heavy imports
belong inside the functions that run a model (features.Backbone, the reward-model scorer, engines).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "sentence_transformers")

# What `prefdata run` does before the first step: the catalog (pipeline.step_types) and load_spec on
# the YAML, which validates each step's config (voter specs, jury jurors, scorers) against its model.
# Pipelines with a train step are left out: a trainer's Config lives in its torch module, and such a
# run needs torch for that step anyway.
PROBE = f"""
import json, sys
from pathlib import Path
from prefdata import pipeline
types = pipeline.step_types()
loaded = []
for p in sorted(Path({str(ROOT / 'pipelines')!r}).glob('*.yaml')):
    if 'uses: train_' not in p.read_text():
        pipeline.load_spec(p)
        loaded.append(p.name)
print(json.dumps({{"types": sorted(types), "loaded": loaded,
                  "heavy": sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})}}))
"""


def test_catalog_and_load_spec_do_not_import_torch(tmp_path):
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "PREFDATA_HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # The probe really loaded the steps that need torch when they run.
    assert {"clean_labels", "train_dpo", "rejection_sampling", "eval_noise"} <= set(got["types"]), got["types"]
    # API-only and curation pipelines were validated, not skipped.
    assert {"clean_labels.yaml", "self_reward.yaml", "bpo.yaml"} <= set(got["loaded"]), got["loaded"]
    assert got["heavy"] == [], f"loading the catalog imported {got['heavy'][:5]}"


# A clean_labels step whose only voter is a jury on an API-like engine (scripted here): voting,
# policies, the card (figures, duplicate and cross-fitting counts) and the jury's bias section.
JUDGE_ONLY = f"""
import json, sys
from types import SimpleNamespace
from prefdata.curation.step import CleanLabelsConfig, run_clean_labels
from prefdata.engines.scripted import ScriptedEngine
from prefdata.schema import validate

t = validate([{{"prompt": f"q{{i}}", "chosen": f"good answer {{i}}", "rejected": f"bad {{i}}"}} for i in range(12)], "pair")
cfg = CleanLabelsConfig(voters=[{{"type": "jury", "judges": [{{"engine": {{"model": "api-judge"}}}}]}}])
ctx = SimpleNamespace(seed=0, step=SimpleNamespace(input="f.jsonl"),
                      engine=lambda o: ScriptedEngine(lambda r, s: "Winner: A", model_id="api-judge"))
res = run_clean_labels(cfg, t, ctx)
print(json.dumps({{"sections": [s for s, _ in res.card_sections],
                  "heavy": sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})}}))
"""


def test_judge_only_clean_labels_run_does_not_import_torch(tmp_path):
    out = subprocess.run([sys.executable, "-c", JUDGE_ONLY], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "PREFDATA_HOME": str(tmp_path), "MPLBACKEND": "Agg"})
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert "Label cleaning" in got["sections"] and "Judges and their biases" in got["sections"], got["sections"]
    assert got["heavy"] == [], f"a judge-only clean_labels run imported {got['heavy'][:5]}"
