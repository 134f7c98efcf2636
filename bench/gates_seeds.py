"""Joint fine-tuning against separate models, compute to the same gates, over seeds (issue 4).

For each seed, the runs of `umsrep model compare` that the ratio needs, under OUT/seed-S:
the pretraining (to its budget: the fine-tuning starts from its end), the fully fine-tuned
joint model and the three separate single-task models, each of these stopped at its first
validation that meets every gate of its heads (`train(..., stop_at_gates=True)`: nothing
after that validation changes it, so the figure is the one a whole run reports, at a
fraction of its cost). Prints one row per seed and the medians; every run resumes, so seeds
can run in parallel as separate invocations sharing OUT, and a last one with every seed
tabulates them. `--report` adds the row of a finished `compare` (its report.json).

    .venv/bin/python bench/gates_seeds.py --seeds 1,2 --out runs/gates-seeds \\
        --report bench/results/gates-cxr/report.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a checkout, uninstalled

from umsrep_core.evaluation.report import joint_to_gates
from umsrep_core.models.umsrep import HEADS
from umsrep_core.training.compare import grid
from umsrep_core.training.runs import train

JOINT = "full-joint"
SEPARATE = [f"separate-{head}" for head in HEADS]
GOAL = 0.5


def seed_records(modality: str, out: Path, seed: int, *, steps: int, pretrain_steps: int,
                 device: str | None) -> list[dict[str, Any]]:
    runs = grid(modality, out / f"seed-{seed}", steps=steps, pretrain_steps=pretrain_steps,
                seed=seed)
    records = []
    for name in ("pretrain", JOINT, *SEPARATE):
        record = train(runs[name], out / f"seed-{seed}" / name, resume=True, device=device,
                       stop_at_gates=name != "pretrain")
        assert record is not None  # only stop_after leaves a run without a record
        records.append(record)
    return records


def row(label: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    by_name = {r["name"]: r for r in records}
    best = joint_to_gates([by_name[name] for name in (JOINT, *SEPARATE)])
    return {"seed": label, "joint_step": by_name[JOINT]["gates_step"],
            "separate_steps": [by_name[name]["gates_step"] for name in SEPARATE],
            **({"ratio": None} if best is None else {
                key: best[key] for key in ("tflop", "separate_tflop", "pretrain_tflop",
                                           "upper_bound", "ratio", "ratio_with_pretraining")})}


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'seed':<22} {'joint step':>10} {'separate steps':>17} {'joint TFLOP':>11} "
             f"{'separate TFLOP':>14} {'ratio':>6} {'+pretraining':>12}"]
    for r in rows:
        steps = " / ".join("never" if s is None else str(s) for s in r["separate_steps"])
        if r["ratio"] is None:
            lines.append(f"{r['seed']:<22} {'never':>10} {steps:>17}   joint never met its gates")
            continue
        bound = "<=" if r["upper_bound"] else ""
        lines.append(f"{r['seed']:<22} {r['joint_step']:>10} {steps:>17} {r['tflop']:>11.2f} "
                     f"{r['separate_tflop']:>14.2f} {bound + format(r['ratio'], '.2f'):>6} "
                     f"{r['ratio_with_pretraining']:>12.2f}")
    # a joint model that never met its gates counts as an infinite ratio in the median
    median = statistics.median(float("inf") if r["ratio"] is None else r["ratio"] for r in rows)
    verdict = "PASS" if median <= GOAL else "FAIL"
    lines.append(f"\nmedian ratio over {len(rows)} seeds: {median:.2f}  goal <= {GOAL}  {verdict}"
                 "   (joint fine-tuning TFLOP to its gates / the separate models' together)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modality", default="cxr", choices=("cxr", "echo_doppler"))
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated (default 0,1,2)")
    parser.add_argument("--steps", type=int, default=1600, help="each run's budget (1600)")
    parser.add_argument("--pretrain-steps", type=int, help="default: --steps")
    parser.add_argument("--out", type=Path, default=Path("runs/gates-seeds"),
                        help="the runs, one folder per seed (default runs/gates-seeds)")
    parser.add_argument("--report", type=Path, nargs="*", default=[], metavar="JSON",
                        help="report.json files of finished `compare` runs to add as rows")
    parser.add_argument("--device", help="default: CUDA when present, else CPU")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()

    rows = [row(f"{path.parent.name} (compare)",
                json.loads(path.read_text(encoding="utf-8"))["records"])
            for path in args.report]
    for seed in (int(s) for s in args.seeds.split(",") if s):
        rows.append(row(str(seed), seed_records(
            args.modality, args.out, seed, steps=args.steps,
            pretrain_steps=args.pretrain_steps or args.steps, device=args.device)))
    print(json.dumps(rows, indent=2) if args.json else table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
