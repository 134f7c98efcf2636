"""`umsrep model predict | evaluate | bench`: the model commands of the `umsrep` CLI.

`add_model_commands(sub)` registers them on the node's parser. This module imports neither
torch nor numpy at import time (the node builds its parser on every start): each command
imports what it needs. Each command takes the parsed Namespace and returns an exit code;
errors are UmsrepError subclasses, which the CLI's main turns into one line and an exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from umsrep_core.errors import InferenceError

if TYPE_CHECKING:
    import numpy as np

    from umsrep_core.inference import Prediction

__all__ = ["IMAGE_SUFFIXES", "add_model_commands", "bench_cmd", "evaluate_cmd", "predict_cmd"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # read as images; anything else as DICOM


def add_model_commands(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `model` and its subcommands on `sub` (the node CLI's subparsers)."""
    model: argparse.ArgumentParser = sub.add_parser(
        "model", help="run, evaluate and benchmark UMS-Rep bundles",
        description="UMS-Rep bundles: one encoder pass per image, every head. "
        "Demo bundles are NOT FOR CLINICAL USE (synthetic phantoms).")
    actions = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")

    def action(name: str, run: Any, help_: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = actions.add_parser(name, help=help_, description=help_)
        p.set_defaults(run=run)
        p.add_argument("--bundle", required=True,
                       help="a packaged bundle's name (cxr, echo_doppler) or a bundle directory")
        p.add_argument("--device", help="cuda, cuda:1 or cpu (default: CUDA when present)")
        return p

    p = action("predict", predict_cmd, "predict DICOM or PNG images: label, probability, "
               "masks, denoised image, measurements")
    p.add_argument("files", type=Path, nargs="+", metavar="FILE")
    p.add_argument("--out", type=Path, help="write masks, overlays and denoised images as PNG")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per image")

    p = action("evaluate", evaluate_cmd, "score a bundle on held-out phantoms or a data set "
               "folder; write report.md, report.json and plots")
    p.add_argument("--n", type=int, default=40, help="cases (default 40)")
    p.add_argument("--seed", type=int, help="first phantom seed (default 1000000: held out)")
    p.add_argument("--data", type=Path, help="a real data set folder instead of phantoms")
    p.add_argument("--out", type=Path, default=Path("evaluation"),
                   help="report folder (default ./evaluation)")

    p = action("bench", bench_cmd, "shared model vs three separate models: time per image, "
               "peak memory, parameters")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return model


def predict_cmd(args: argparse.Namespace) -> int:
    import pydicom  # noqa: PLC0415 - commands import what they need
    from pydicom.errors import InvalidDicomError  # noqa: PLC0415

    from umsrep_core.imaging.pixels import read_frames  # noqa: PLC0415
    from umsrep_core.inference import Predictor, read_image_file  # noqa: PLC0415
    from umsrep_core.models.bundle import load_bundle  # noqa: PLC0415

    predictor = Predictor(load_bundle(args.bundle), device=args.device)
    results: list[dict[str, Any]] = []
    for path in args.files:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            image = read_image_file(path)
            predictions, images = [predictor.predict_array(image)], [image]
        else:
            try:
                ds = pydicom.dcmread(path)
            except (InvalidDicomError, OSError) as exc:
                raise InferenceError(f"{path}: not a readable DICOM file or image ({exc})"
                                     ) from exc
            predictions, images = predictor.predict_dicom(ds), read_frames(ds)
        for frame, (prediction, image) in enumerate(zip(predictions, images, strict=True)):
            if args.out is not None:
                stem = path.stem if len(predictions) == 1 else f"{path.stem}_f{frame + 1}"
                _write_pngs(args.out, stem, image, prediction)
            results.append({"file": str(path), "frame": frame + 1, **prediction.to_json()})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(_summary(r))
    return 0


def evaluate_cmd(args: argparse.Namespace) -> int:
    from umsrep_core.evaluation.report import HELD_OUT_SEED, evaluate, verdict  # noqa: PLC0415
    from umsrep_core.models.bundle import load_bundle  # noqa: PLC0415

    report = evaluate(load_bundle(args.bundle), out=args.out, n=args.n,
                      seed=HELD_OUT_SEED if args.seed is None else args.seed,
                      data_dir=args.data, device=args.device)
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
