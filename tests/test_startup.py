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
