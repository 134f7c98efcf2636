"""`umsrep model pretrain | finetune | compare | export | evaluate | predict | bench`.

`add_model_commands(sub)` registers them on the node's parser. This module imports neither
torch nor numpy at import time (the node builds its parser on every start): each command
imports what it needs. Each command takes the parsed Namespace and returns an exit code;
errors are UmsrepError subclasses, which the CLI's main turns into one line and an exit code.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from umsrep_core.errors import InferenceError
from umsrep_core.pipelines import names

# Plain names, kept here so that building the parser imports no torch (tests check they agree).
HEADS = ("denoise", "segment", "classify")
STRATEGIES = ("frozen", "partial", "full")
SCHEDULES = ("joint", "sequential")

if TYPE_CHECKING:
    import numpy as np

    from umsrep_core.inference import Prediction

__all__ = ["IMAGE_SUFFIXES", "add_model_commands", "bench_cmd", "compare_cmd", "evaluate_cmd",
           "export_cmd", "predict_cmd", "train_cmd"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # read as images; anything else as DICOM


def add_model_commands(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `model` and its subcommands on `sub` (the node CLI's subparsers)."""
    model: argparse.ArgumentParser = sub.add_parser(
        "model", help="train, run, evaluate and benchmark UMS-Rep models",
        description="UMS-Rep: one encoder pass per image, every head. The bundles are "
        "research models, NOT FOR CLINICAL USE.")
    actions = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")

    def action(name: str, run: Any, help_: str, *, bundle: bool = True
               ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = actions.add_parser(name, help=help_, description=help_)
        p.set_defaults(run=functools.partial(_with_threads, run))
        if bundle:
            p.add_argument("--bundle", required=True, help="a packaged bundle's name (cxr, "
                           "echo_doppler) or a bundle directory")
        p.add_argument("--device", help="cuda, cuda:1 or cpu (default: CUDA when present)")
        p.add_argument("--threads", type=int, help="torch CPU threads (default: every core "
                       "this process may use)")
        return p

    def training(p: argparse.ArgumentParser, steps: int, out: str) -> None:
        p.add_argument("--modality", required=True, choices=names())
        p.add_argument("--out", type=Path, required=True, help=out)
        p.add_argument("--steps", type=int, default=steps, help=f"default {steps}")
        p.add_argument("--batch", type=int, default=16)
        p.add_argument("--size", type=int, help="model input size (default 128; 256 with "
                       "--data: a cardiothoracic ratio to 0.02 needs the finer grid)")
        p.add_argument("--data", type=Path, nargs="+", default=[], metavar="DIR",
                       help="real data set folders (jsrt-scr, nih-cxr8...) to train on, their "
                       "train split, and validate on, their validation split (default: "
                       "phantoms)")
        p.add_argument("--width", type=int, help="encoder width (default 20; wider on a GPU)")
        p.add_argument("--unshuffle", type=int, help="fold each N x N block of pixels into "
                       "channels before the encoder (2: every level at half resolution, the "
                       "outputs still at full; default 1: none)")
        p.add_argument("--val", type=int, help="held-out phantoms validated every 100 steps "
                       "(default 256 radiographs, 64 Doppler strips)")

    def run(p: argparse.ArgumentParser) -> None:
        training(p, 800, "the run directory")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its checkpoint")

    p = action("pretrain", train_cmd, "stage 1: learn the representation without labels "
               "(reconstruct corrupted phantom images: noise, hidden patches)", bundle=False)
    run(p)
    p.set_defaults(stage="pretrain")

    p = action("finetune", train_cmd, "stage 2: train task heads on a pretrained encoder "
               "(or, without --init, a model from scratch)", bundle=False)
    run(p)
    p.set_defaults(stage="finetune")
    p.add_argument("--init", type=Path, help="a pretrain run directory")
    p.add_argument("--strategy", choices=STRATEGIES, default="full",
                   help="what of the pretrained encoder trains (default full)")
    p.add_argument("--schedule", choices=SCHEDULES, default="joint",
                   help="heads together (weighted loss) or one after the other")
    p.add_argument("--heads", default=",".join(HEADS),
                   help="comma-separated heads (default all; one head = a single-task model)")

    p = action("compare", compare_cmd, "the fine-tuning strategies against separate "
               "single-task models: train every run, report metrics and compute", bundle=False)
    training(p, 400, "a directory for the runs and the report (rerun the command to resume)")
    p.add_argument("--pretrain-steps", type=int, help="default: --steps")
    p.add_argument("--seed", type=int, default=0, help="every run's seed (default 0)")
    p.add_argument("--n", type=int, default=20, help="evaluation cases (default 20)")
    p.add_argument("--runs", dest="only", type=lambda text: text.split(","),
                   help="comma-separated runs of the grid to train (default all): "
                        "pretrain, frozen-joint... scratch-joint, separate-denoise...")

    p = action("export", export_cmd, "package a finished fine-tuning run as a bundle",
               bundle=False)
    p.add_argument("--run", dest="run_dir", type=Path, required=True, metavar="DIR",
                   help="the run directory")
    p.add_argument("--out", type=Path, required=True, help="the bundle directory to write")
    p.add_argument("--name", help="bundle name (default: the run directory's name)")
    p.add_argument("--version", default="0.1.0")

    p = action("predict", predict_cmd, "predict DICOM or PNG images: label, probability, "
               "masks, denoised image, measurements")
    p.add_argument("files", type=Path, nargs="+", metavar="FILE")
    p.add_argument("--out", type=Path, help="write masks, overlays and denoised images as PNG")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per image")

    p = action("evaluate", evaluate_cmd, "score a bundle on held-out phantoms or a data set "
               "folder; write report.md, report.json and plots")
    p.add_argument("--n", type=int, help="cases (default: 40 phantoms, or every image of "
                   "each data set)")
    p.add_argument("--seed", type=int, help="first phantom seed (default 1000000: held out)")
    p.add_argument("--data", type=Path, nargs="+", default=[], metavar="DIR",
                   help="real data set folders instead of phantoms (jsrt-scr, nih-cxr8, ...)")
    p.add_argument("--split", choices=("all", "validation", "train"), default="all",
                   help="with --data: the patients to score (validation: those training "
                   "holds out; default all)")
    p.add_argument("--runs", type=Path, nargs="+", default=[], metavar="RUN",
                   help="training run directories to tabulate (strategies, compute)")
    p.add_argument("--out", type=Path, default=Path("evaluation"),
                   help="report folder (default ./evaluation)")

    p = action("bench", bench_cmd, "shared model vs three separate models: time per image, "
               "peak memory, parameters")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return model


def _with_threads(command: Any, args: argparse.Namespace) -> int:
    """Run a model command with torch's CPU threads set, and say how many: torch's default
    (one per physical core) collapses when the machine is shared, so it is always explicit."""
    import os  # noqa: PLC0415

    import torch  # noqa: PLC0415 - building the parser imports no torch

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    print(f"umsrep model {args.model_command}: {threads} torch threads", file=sys.stderr)
    code: int = command(args)
    return code


def train_cmd(args: argparse.Namespace) -> int:
    from umsrep_core.training.runs import RunSpec, train  # noqa: PLC0415

    finetune = args.stage == "finetune"
    spec = RunSpec(
        args.modality, stage=args.stage,
        heads=tuple(h.strip() for h in args.heads.split(",")) if finetune else ("denoise",),
        strategy=args.strategy if finetune else "full",
        schedule=args.schedule if finetune else "joint",
        init=str(args.init) if finetune and args.init else None, steps=args.steps,
        batch=args.batch, image_size=_size(args), seed=args.seed, data=_data(args),
        model=_model(args))
    record = train(spec, args.out, resume=args.resume, device=args.device, val=args.val)
    assert record is not None  # only a test's stop_after ends a run early
    print(_run_line(record))
    return 0


def compare_cmd(args: argparse.Namespace) -> int:
    from umsrep_core.training.compare import compare  # noqa: PLC0415

    report = compare(args.modality, args.out, steps=args.steps,
                     pretrain_steps=args.pretrain_steps, n=args.n, device=args.device,
                     only=args.only, val=args.val, batch=args.batch, image_size=_size(args),
                     seed=args.seed, data=_data(args), model=_model(args))
    for record in report["records"]:
        print(_run_line(record))
    best = report["joint_to_gates"]
    print("joint fine-tuning against separate, to the same gates: " + (
        f"{'at most ' if best['upper_bound'] else ''}{best['ratio']:.2f} of the separate "
        f"models' compute ({best['run']}; goal <= 0.5), {best['ratio_with_pretraining']:.2f} "
        "with its pretraining" if best else
        "not measured: no multi-task run met its gates, or no separate model ran"))
    print(f"report in {args.out / 'report' / 'report.md'}")
    return 0


def export_cmd(args: argparse.Namespace) -> int:
    from umsrep_core.training.runs import export  # noqa: PLC0415

    path = export(args.run_dir, args.out, name=args.name or args.run_dir.name,
                  version=args.version)
    print(f"bundle written to {path} (NOT FOR CLINICAL USE: a research model)")
    return 0


def _size(args: argparse.Namespace) -> int:
    return int(args.size or (256 if args.data else 128))


def _data(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(str(folder) for folder in args.data)


def _model(args: argparse.Namespace) -> dict[str, int]:
    """ModelConfig overrides from the command line: the encoder's width (the decoders keep
    theirs: their cost is what the shared encoder saves, so it stays small) and unshuffle."""
    return {k: v for k in ("width", "unshuffle") if (v := getattr(args, k))}


def _run_line(record: dict[str, Any]) -> str:
    scores = ", ".join(f"{k} {_short(v)}" for k, v in record["metrics"].items())
    step = record.get("gates_step")
    reached = "gates never met" if step is None else f"gates met at step {step}"
    return (f"{record['name']}: {record['strategy']}, {record['steps']} steps, "
            f"{record['seconds']:.1f} s, {reached}: {scores}")


def predict_cmd(args: argparse.Namespace) -> int:
    from umsrep_core.imaging.pixels import read_frames  # noqa: PLC0415
    from umsrep_core.inference import Predictor, read_image_file  # noqa: PLC0415
    from umsrep_core.models.bundle import load_bundle  # noqa: PLC0415

    predictor = Predictor(load_bundle(args.bundle), device=args.device)
    # The denoised image is only written with --out: without it, its head is not run.
    heads = [h for h in predictor.heads if h != "denoise" or args.out is not None]
    results: list[dict[str, Any]] = []
    for path in args.files:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            image = read_image_file(path)
            predictions, images = [predictor.predict_array(image, heads=heads)], [image]
        else:
            ds = _read_dicom(path)
            predictions = predictor.predict_dicom(ds, heads=heads)
            # The frames again, for the PNGs only: the Predictor keeps no pixels it has read.
            images = read_frames(ds) if args.out is not None else []
        for frame, prediction in enumerate(predictions):
            if args.out is not None:
                stem = path.stem if len(predictions) == 1 else f"{path.stem}_f{frame + 1}"
                _write_pngs(args.out, stem, images[frame], prediction)
            results.append({"file": str(path), "frame": frame + 1, **prediction.to_json()})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(_summary(r))
    return 0


def _read_dicom(path: Path) -> Any:
    """A DICOM file, or a bare dataset without preamble and File Meta, as some modalities
    write them (a PACS stores those too), when it holds pixel data."""
    import pydicom  # noqa: PLC0415 - commands import what they need
    from pydicom.errors import InvalidDicomError  # noqa: PLC0415

    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, OSError) as exc:
        try:
            bare = pydicom.dcmread(path, force=True)
        except Exception:  # whatever force-reading raises, the first error says it
            bare = None
        if bare is None or "PixelData" not in bare:
            raise InferenceError(f"{path}: not a readable DICOM file or image ({exc})"
                                 ) from exc
        return bare


def evaluate_cmd(args: argparse.Namespace) -> int:
    from umsrep_core.evaluation.report import HELD_OUT_SEED, evaluate, verdict  # noqa: PLC0415
    from umsrep_core.models.bundle import load_bundle  # noqa: PLC0415
    from umsrep_core.training.runs import load_record  # noqa: PLC0415

    report = evaluate(load_bundle(args.bundle), out=args.out, n=args.n,
                      seed=HELD_OUT_SEED if args.seed is None else args.seed,
                      data=args.data, split=args.split,
                      records=[load_record(r) for r in args.runs], device=args.device)
    for gate in report["gates"]:
        value = "n/a" if gate["value"] is None else f"{gate['value']:.4g}"
        print(f"{verdict(gate['passed']):4}  {gate['metric']} = {value} "
              f"(gate {gate['op']} {gate['threshold']:g})")
    print(f"{'PASS' if report['passed'] else 'FAIL'}: {report['n']} cases, report in "
          f"{args.out / 'report.md'}")
    return 0 if report["passed"] else 1


def bench_cmd(args: argparse.Namespace) -> int:
    from umsrep_core.benchmark import bench, format_bench  # noqa: PLC0415
    from umsrep_core.models.bundle import load_bundle  # noqa: PLC0415

    result = bench(load_bundle(args.bundle), device=args.device, iterations=args.iterations,
                   batch=args.batch)
    print(json.dumps(result, indent=2) if args.json else format_bench(result))
    return 0


def _summary(r: dict[str, Any]) -> str:
    skip = {"file", "frame", "modality", "label", "probability", "reasons"}
    values = ", ".join(f"{k}={_short(v)}" for k, v in r.items() if k not in skip)
    probability = "n/a" if r["probability"] is None else f"{r['probability']:.3f}"
    line = f"{r['file']}[{r['frame']}]: {r['label']} (p={probability}) {values}"
    return line + "".join(f"\n    - {why}" for why in r["reasons"])


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    return "null" if value is None else str(value)


def _write_pngs(out: Path, stem: str, image: np.ndarray, prediction: Prediction) -> None:
    """<stem>_mask_<label>.png (0/255), <stem>_overlay.png, <stem>_denoised.png."""
    import matplotlib.image as mpimg  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from umsrep_core.evaluation.report import overlay  # noqa: PLC0415

    out.mkdir(parents=True, exist_ok=True)
    for name, mask in prediction.masks.items():
        mpimg.imsave(out / f"{stem}_mask_{name}.png", mask.astype(np.uint8) * 255, cmap="gray",
                     vmin=0, vmax=255)
    mpimg.imsave(out / f"{stem}_overlay.png", overlay(image, prediction.masks))
    if prediction.denoised is not None:
        mpimg.imsave(out / f"{stem}_denoised.png", prediction.denoised, cmap="gray", vmin=0,
                     vmax=1)
    print(f"wrote {out / stem}_*.png", file=sys.stderr)
