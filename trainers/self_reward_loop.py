"""The self-rewarding loop (Yuan et al. 2024, arXiv 2401.10020): M_t -> pairs judged by M_t -> DPO -> M_{t+1}.

    prefdata run pipelines/self_reward_loop.yaml
    prefdata run pipelines/self_reward_loop.yaml --set iterations=3

Per iteration t = 1..T:
  1-3. M_t generates N candidates per prompt and judges them itself (`generators.self_reward`);
  4.   the pairs are committed as `<name>-iter<t>`, with M_t and the previous iteration in lineage;
  5.   DPO with M_t as the reference gives M_{t+1} (LoRA adapters merged into a full checkpoint so the
       next iteration can generate with it).
A state file in the output directory records each finished stage, so a killed loop resumes at the
first unfinished one; finished generations also sit in the request cache.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prefdata.errors import ConfigError
from prefdata.generators.self_reward import SelfRewardConfig
from prefdata.models import DEFAULT_MODEL


class LoopConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    self_reward_loop: bool = Field(True, description="Marks this YAML as a loop (dispatched by `prefdata run`).")
    name: str = Field("self-reward-loop", description="Dataset name prefix: <name>-iter<t>.")
    prompts: str = Field("builtin:quickstart_prompts", description="Prompt source (file, store ref, builtin:<set>).")
    limit: int | None = Field(None, ge=1)
    model: str = Field(DEFAULT_MODEL, description="M_1 (the paper starts from an SFT model).")
    iterations: int = Field(2, ge=1, le=10)
    seed: int = 0
    output_dir: str | None = Field(None, description="Default: $PREFDATA_HOME/models/loops/<name>.")
    generate: SelfRewardConfig = Field(default_factory=SelfRewardConfig)
    dpo: dict = Field(default_factory=lambda: {"lora": True, "beta": 0.1, "max_steps": 10, "learning_rate": 5e-5,
                                               "batch_size": 2, "max_length": 384},
                      description="DPOTrainConfig fields for every iteration (the paper: beta 0.1).")


def load(path: str | Path, overrides: list[str] | None = None) -> LoopConfig:
    from prefdata.pipeline import apply_overrides, _fmt_validation

    raw = yaml.safe_load(Path(path).read_text()) or {}
    raw = apply_overrides(raw, overrides or [], str(path))
    try:
        return LoopConfig(**raw)
    except ValidationError as e:
        raise ConfigError(_fmt_validation(str(path), "", e)) from None


def _atomic_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _merge_lora(adapter_dir: str, base: str, out: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefdata.models import resolve_model

    model = AutoModelForCausalLM.from_pretrained(resolve_model(base), dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    merged.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(tmp)
    os.replace(tmp, out)


def run(cfg: LoopConfig, command: str | None = None) -> dict:
    """Run (or resume) the loop; returns the state: per iteration its dataset ref and model dir."""
    from prefdata import store

    # The name becomes a directory and dataset names: check it (and the longest name committed)
    # before anything is created, and before the slow imports below.
    store.check_name(cfg.name)
    store.check_name(f"{cfg.name}-iter{cfg.iterations}-candidates")
    from prefdata.engines import EngineConfig, get_engine
    from prefdata.generators.self_reward import generate
    from prefdata.pipeline import read_input
    from trainers.dpo import DPOTrainConfig, train

    out = Path(cfg.output_dir) if cfg.output_dir else store.named_path("models/loops", cfg.name)
    out.mkdir(parents=True, exist_ok=True)
    state_file = out / "state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {"iterations": {}}
    prompts, prompts_ref = read_input(cfg.prompts, {}, "raise", store.quarantine_path(cfg.name))
    if cfg.limit:
        prompts = prompts.slice(0, cfg.limit)
    model_t, prev_ref = cfg.model, None
    for t in range(1, cfg.iterations + 1):
        it = state["iterations"].setdefault(str(t), {})
        if "dataset" not in it:
            engine = get_engine(EngineConfig(model=model_t))
            report: dict = {}
            pairs, cands = generate(prompts, engine, cfg.generate, seed=cfg.seed + t, report=report)
            lineage = {"parents": [prompts_ref] + ([prev_ref] if prev_ref else []), "model": engine.model_id,
                       "engine": engine.name, "iteration": t, "policy_model": model_t,
                       "step": {"uses": "self_reward_loop", "config": cfg.model_dump(mode="json")},
                       "templates": {"self_reward": "self-reward-1", "rubric_judge": "rubric-judge-1"},
                       "seeds": {"iteration": cfg.seed + t}, "report": report}
            cv = store.commit(f"{cfg.name}-iter{t}-candidates", cands, kind="completion", lineage=lineage, command=command)
            v = store.commit(f"{cfg.name}-iter{t}", pairs, kind="pair", lineage={**lineage, "side_tables": {"candidates": cv.ref}},
                             command=command)
            it.update({"dataset": v.ref, "candidates": cv.ref, "policy": model_t, "pairs": pairs.num_rows})
            _atomic_json(state_file, state)
        if "model" not in it:
            if it["pairs"] == 0:
                raise ConfigError(f"iteration {t} produced no pairs (all ties or unparseable judgements); "
                                  "use more prompts or candidates")
            dpo = DPOTrainConfig(**{**cfg.dpo, "dataset": it["dataset"], "model": model_t,
                                    "output_dir": str(out / f"iter{t}-dpo"), "seed": cfg.seed + t})
            train(dpo)
            next_model = out / f"M{t + 1}"
            if dpo.lora:
                _merge_lora(dpo.output_dir, model_t, next_model)
                for f in ("README.md", "prefdata-train.json", "training_curves.png"):  # the card travels with M_{t+1}
                    if (Path(dpo.output_dir) / f).is_file():
                        shutil.copy(Path(dpo.output_dir) / f, next_model / f)
            else:
                os.replace(dpo.output_dir, next_model)
            it["model"] = str(next_model)
            _atomic_json(state_file, state)
        model_t, prev_ref = it["model"], it["dataset"]
    return state
