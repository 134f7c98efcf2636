"""Joint fine-tuning against separate models, compute to the same gates, each at the shortest
budget that reaches them (issue 21, part 3).

`umsrep model compare` and gates_seeds.py take the compute to the gates inside one long
budget: the first validation, every 100 steps, that meets every gate. A run's learning rate
follows its whole budget (one warm-up-and-anneal cycle), so a long budget charges each run
for a schedule it may not need, and each validation's batch-norm refresh is counted too. Here
each arm (the fully fine-tuned joint model on the shared pretraining, and the three separate
single-task models from scratch) is trained at budgets of growing length, each a whole run
validated once, at its end, as its export would be; its compute to the gates is the shortest
budget's whose model met them. Every run resumes under OUT (OUT/pretrain, OUT/<arm>-<steps>),
so the command can be stopped and started again.

    .venv/bin/python bench/budget_sweep.py --data ../shared/data/jsrt-scr \\
        ../shared/data/nih-cxr8 --size 256 --width 24 --unshuffle 2 --out runs/budget-sweep
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a checkout, uninstalled

import torch

from umsrep_core.evaluation.report import gate_passed, joint_to_gates
from umsrep_core.models.umsrep import HEADS
from umsrep_core.pipelines import pipeline
from umsrep_core.training.compare import grid
from umsrep_core.training.runs import RunSpec, train

JOINT = "full-joint"
SEPARATE = [f"separate-{head}" for head in HEADS]
GOAL = 0.5


def sweep(name: str, spec: RunSpec, out: Path, budgets: list[int], device: str | None
          ) -> list[dict[str, Any]]:
    """The arm's runs at each budget in turn, up to the first whose model meets its gates."""
    records = []
    for steps in budgets:
        record = train(replace(spec, steps=steps), out / f"{name}-{steps}", resume=True,
                       device=device, val_every=steps)
        assert record is not None  # only stop_after leaves a run without a record
        records.append(record)
        if record["metrics"]["gates_met"]:
            break
    return records


def missed(modality: str, metrics: dict[str, Any]) -> str:
    """The gated metrics of a run that missed, as 'name value'."""
    gates = pipeline(modality).gates
    return ", ".join(f"{key} {value:.4g}" for key, value in metrics.items()
                     if key in gates and not gate_passed(*gates[key], value)) or "every gate met"


def table(modality: str, arms: dict[str, list[dict[str, Any]]]) -> str:
    lines = [f"{'arm':<18} {'steps':>5} {'TFLOP':>7}  "
             "validation at the end: what missed its gate"]
    for name, records in arms.items():
        for r in records:
            lines.append(f"{name:<18} {r['steps']:>5} {r['tflop']:>7.2f}  "
                         f"{missed(modality, r['metrics'])}")
    never = [name for name, records in arms.items() if not records[-1]["metrics"]["gates_met"]]
    if never:
        lines.append(f"\nno ratio: {', '.join(never)} met no gates within the budgets given")
        return "\n".join(lines)
    # each arm's last run met its gates at its end: its compute to them is its whole run's
    best = joint_to_gates([records[-1] for records in arms.values()])
    assert best is not None  # the joint arm and the separate ones all met their gates
    lines.append(f"\njoint {best['tflop']:.2f} TFLOP against the separate models' "
                 f"{best['separate_tflop']:.2f}: {best['ratio']:.2f}  goal <= {GOAL}  "
                 f"{'PASS' if best['ratio'] <= GOAL else 'FAIL'}   (with the pretraining's "
                 f"{best['pretrain_tflop']:.2f}: {best['ratio_with_pretraining']:.2f})")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modality", default="cxr", choices=("cxr", "echo_doppler"))
    parser.add_argument("--data", nargs="*", default=[], metavar="DIR",
                        help="real data set folders (default: the modality's phantoms)")
    parser.add_argument("--budgets", default="100,200,300,400,500,600,700,800",
                        help="comma-separated step budgets, tried in turn (default 100-800)")
    parser.add_argument("--pretrain-steps", type=int, default=400)
    parser.add_argument("--size", type=int, default=128, help="model input size")
    parser.add_argument("--width", type=int, help="encoder width (the model's default)")
    parser.add_argument("--unshuffle", type=int, help="the model's default: 1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/budget-sweep"))
    parser.add_argument("--device", help="default: CUDA when present, else CPU")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch CPU threads (default: every core this process may use)")
    parser.add_argument("--json", action="store_true", help="print every record's summary")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"training with {args.threads} torch threads", file=sys.stderr)

    model = {key: value for key in ("width", "unshuffle")
             if (value := getattr(args, key)) is not None}
    # the arms' steps are each budget's (sweep); the grid's are the pretraining's
    runs = grid(args.modality, args.out, steps=args.pretrain_steps,
                pretrain_steps=args.pretrain_steps, batch=16, image_size=args.size,
                seed=args.seed, data=tuple(args.data), model=model)
    train(runs["pretrain"], args.out / "pretrain", resume=True, device=args.device,
          val_every=args.pretrain_steps)
    budgets = sorted(int(b) for b in args.budgets.split(",") if b)
    arms = {name: sweep(name, runs[name], args.out, budgets, args.device)
            for name in (JOINT, *SEPARATE)}
    if args.json:
        print(json.dumps({name: [{key: r[key] for key in ("steps", "tflop", "metrics")}
                                 for r in records] for name, records in arms.items()},
                         indent=2))
    else:
        print(table(args.modality, arms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
