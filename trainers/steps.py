"""Training as pipeline steps: `uses: train_sft | train_dpo | train_kto | train_orpo | train_reward |
train_rrhf | train_pro | train_armo`.

    - name: dpo
      uses: train_dpo
      input: step:clean              # the dataset version trained on
      output: flywheel-dpo           # names the model folder under $PREFDATA_HOME/models/pipelines/
      config: {lora: true, beta: 0.1, max_steps: 8}   # DPOTrainConfig, keys checked

`config` is the trainer's own Config (the same keys as `prefdata train <kind> --set`), less the two
the pipeline owns: `dataset` (the step's input) and `output_dir` (the step's model folder). `model`
defaults to the step's engine model, so in a loop the policy being trained is the one generating.

The model lands in `<artifact dir>/model`: a full checkpoint any engine or trainer loads. A LoRA
policy is merged into its base there (engines generate from plain checkpoints; the adapter and its
card stay in `<artifact dir>/adapter`); the trainer's card (dataset ref and content hash, config,
curves) is copied beside the merged weights. A later step names it `step:<this step>`.
"""

from __future__ import annotations

from pathlib import Path

from prefdata.errors import ConfigError
from prefdata.steps import StepResult, register_step
from trainers import registry

PIPELINE_OWNED = ("dataset", "output_dir")  # set from the step's input and folder, never in YAML


def _train(kind: str, cfg, table, ctx) -> StepResult:
    given = cfg.model_fields_set
    owned = [k for k in PIPELINE_OWNED if k in given]
    if owned:
        raise ConfigError(f"{ctx.source_file}: steps.{ctx.step.name}.config: {', '.join(owned)} is set by the "
                          "pipeline (the step's input and its model folder); remove it")
    if ctx.input_ref is None or str(ctx.input_ref).startswith("builtin:"):
        raise ConfigError(f"steps.{ctx.step.name}: a train step reads a dataset version or file, "
                          f"not '{ctx.step.input}'")
    base = cfg.model if "model" in given else ctx.engine_config().model
    out = Path(ctx.artifact_dir)
    # A trainer that merges its own adapter (reward) leaves none here; armo has no `lora` (heads only).
    adapter = bool(getattr(cfg, "lora", False)) and not registry.spec(kind).merges_lora
    train_dir = out / ("adapter" if adapter else "model")
    run_cfg = cfg.model_copy(update={"dataset": ctx.input_ref, "model": base, "output_dir": str(train_dir)})
    card = registry.module(kind).train(run_cfg)
    if adapter:
        from prefdata.models import merge_lora  # the one adapter merge (engines use it on load too)

        merge_lora(train_dir, base, out / "model")
    import json

    train_json = json.loads((Path(card).parent / "prefdata-train.json").read_text())
    result = train_json.get("result", {})
    md = (f"`{kind}` on `{ctx.input_ref}` from `{base}`" + (" (LoRA, merged)" if adapter else "") +
          f". Trainer card: `{card}`.")
    return StepResult(kind="model", card_path=str(out / "model" / "README.md"), metrics=result,
                      card_sections=[("Training", md)],
                      lineage={"base_model": base, "dataset": train_json.get("dataset"),
                               "dataset_sha256": train_json.get("dataset_sha256"), "adapter": adapter})


def _declare(kind: str) -> None:
    def run(cfg, table, ctx, _kind=kind):
        return _train(_kind, cfg, table, ctx)

    run.__qualname__ = run.__name__ = f"train_{kind}"
    run.__doc__ = f"Train with trainers.{kind} on the step's input; the model is `step:<name>` later."
    register_step(f"train_{kind}", lambda: registry.config_class(kind), run, input=registry.spec(kind).reads,
                  output="model")


for _kind in registry.KINDS:
    _declare(_kind)
