"""Trainers that consume dataset versions directly (issue 5).

One module per method, each with a pydantic `Config` (its YAML keys / `--set` fields) and
`train(cfg) -> Path` (the model card), also runnable as `python -m trainers.<kind>` and
`prefdata train <kind>`:

- `trainers.sft`     chat SFT, loss on completions only; also the BPO prompt rewriter
- `trainers.dpo`     DPO with per-pair soft labels and offsets (`PrefDPOTrainer`), cached reference log-probs
- `trainers.kto`     KTO on unpaired rows or split pairs, desirable/undesirable weight band checked
- `trainers.orpo`    ORPO through `trl.experimental.orpo`
- `trainers.reward`  Bradley-Terry reward model with margins and soft labels (`PrefRewardTrainer`);
                     centring, whitening (`trainers.reward_norm`) and GRM's SFT regulariser
- `trainers.rrhf`    RRHF ranking loss over several scored candidates per prompt, plus SFT on the best
- `trainers.pro`     PRO listwise (Plackett-Luce) loss over ranked candidates, plus SFT
- `trainers.armo`    multi-objective reward model (ArmoRM-style): per-aspect heads and a prompt gate

The DPO family in `trainers.dpo` also holds IPO, hinge (SLiC) and SimPO (reference-free).
Shared pieces: `trainers.registry` (the one lookup, kind -> module), `trainers.losses` (pure loss
functions, one `@loss` record each), `trainers.ranking` (candidate groups for RRHF/PRO),
`trainers.common` (config loading, data, checks, model loading), `trainers.card` and `trainers.plots`
(outputs), `trainers.cli`.
"""
