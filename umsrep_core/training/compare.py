"""`umsrep model compare`: the paper's comparison of fine-tuning strategies, on phantoms or on
real data sets (`data`: trained on their train split, evaluated on their validation split).

One unsupervised pretraining run; on its encoder, the task heads fine-tuned with the encoder
frozen, partly unfrozen or fully fine-tuned, heads joint or sequential; a multi-task model from
scratch; and one single-task model per head from scratch (the separate models), each with the
fine-tuning's step budget. Every run is resumable: running the command again continues
where it stopped and skips what has finished; `only` trains a part of the grid (the pretraining
comes along where a chosen run needs it). The fully fine-tuned joint model (without it, the one
from scratch) is exported as a bundle and evaluated, and the report tabulates every run's
validation metrics and training compute against the separate models', to the end of the
budget and to the first validation that met its gates.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from umsrep_core.models.umsrep import HEADS, STRATEGIES
from umsrep_core.training.runs import (
    SCHEDULES,
    RunSpec,
    TrainingError,
    export,
    load_record,
    train,
)

__all__ = ["compare", "grid"]


def grid(modality: str, root: Path, *, steps: int, pretrain_steps: int,
         **common: Any) -> dict[str, RunSpec]:
    """Run directory name -> spec, in the order they must run (pretrain first)."""
    pretrain = root / "pretrain"
    runs = {"pretrain": RunSpec(modality, stage="pretrain", heads=("denoise",),
                                steps=pretrain_steps, **common)}
    for schedule in SCHEDULES:
        for strategy in STRATEGIES:
            runs[f"{strategy}-{schedule}"] = RunSpec(
                modality, strategy=strategy, schedule=schedule, init=str(pretrain),
                steps=steps, **common)
    runs["scratch-joint"] = RunSpec(modality, steps=steps, **common)
    for head in HEADS:
        runs[f"separate-{head}"] = RunSpec(modality, heads=(head,), steps=steps, **common)
    return runs


def compare(modality: str, out: Path, *, steps: int, pretrain_steps: int | None = None,
            n: int = 20, device: str | None = None, progress: bool = True,
            eval_size: int | None = None, only: Sequence[str] | None = None,
            val: int | None = None, **common: Any) -> dict[str, Any]:
    """Train (or resume) the runs of the grid under `out` (`only`: those named), export
    `full-joint` (or `scratch-joint`) to out/bundle and write the evaluation report with the
    strategy table to out/report."""
    from umsrep_core.evaluation.report import evaluate  # noqa: PLC0415 - matplotlib & co
    from umsrep_core.models.bundle import load_bundle  # noqa: PLC0415

    runs = grid(modality, out, steps=steps, pretrain_steps=pretrain_steps or steps, **common)
    if only is not None:
        unknown = sorted(set(only) - set(runs))
        if unknown:
            raise TrainingError(f"no run {', '.join(unknown)} in the grid: choose among "
                                f"{', '.join(runs)}")
        needed = set(only) | {"pretrain" for name in only if runs[name].init}
        runs = {name: spec for name, spec in runs.items() if name in needed}
    served = next((name for name in ("full-joint", "scratch-joint") if name in runs), None)
    if served is None:
        raise TrainingError("the grid to run has neither full-joint nor scratch-joint: "
                            "nothing multi-task to export and evaluate")
    records = []
    for name, spec in runs.items():
        train(spec, out / name, resume=True, device=device, progress=progress, val=val)
        records.append(load_record(out / name))
    bundle = export(out / served, out / "bundle", name=f"{modality}-{served}")
    data = [Path(folder) for folder in common.get("data", ())]
    return evaluate(load_bundle(bundle), out=out / "report", n=None if data else n, data=data,
                    split="validation", records=records, size=eval_size, device=device,
                    progress=progress)
