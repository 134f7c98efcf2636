"""`umsrep model evaluate`: a bundle on held-out phantoms or a real data set, against the gates.

Phantoms are drawn from seeds 1_000_000 up (training uses lower seeds), at realistic sizes
(chest 1k-3k pixels, echo screen captures 256-600 rows), written as DICOM datasets in memory
and run through `Predictor.predict_dicom`: the scores include pixel decoding, the letterbox and
its inverse, exactly as a received study would go. Every score is computed on the SOURCE grid.
Aggregates are means over cases; a gate on a value that could not be computed fails, except
on a real data set, where a value needing ground truth it lacks (a clean image, a mask) is n/a.
"""

from __future__ import annotations

import itertools
import json
import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from umsrep_core.errors import InferenceError
from umsrep_core.evaluation.metrics import (
    abs_error,
    auc,
    auc_ovr,
    dice,
    psnr,
    rel_error,
    roc_curve,
    ssim,
)
from umsrep_core.imaging.pixels import read_frames
from umsrep_core.inference import Prediction, Predictor
from umsrep_core.models.bundle import Bundle
from umsrep_core.pipelines import names, pipeline
from umsrep_core.pipelines.base import PhantomCase

if TYPE_CHECKING:
    from umsrep_core.data import Dataset as ImageSet

__all__ = ["HELD_OUT_SEED", "evaluate", "gate_passed", "joint_to_gates", "overlay",
           "verdict"]

HELD_OUT_SEED = 1_000_000
_COLOURS = np.array([[1.0, 0.2, 0.2], [0.2, 0.5, 1.0], [1.0, 0.85, 0.1], [0.2, 1.0, 0.4]])
_OVERLAYS = 3  # cases drawn in overlays.png


@dataclass
class _Case:
    id: str
    image: np.ndarray  # what the predictor saw, source grid
    prediction: Prediction
    masks: dict[str, np.ndarray]  # ground truth available
    label: int | None  # class index
    clean: np.ndarray | None = None
    truth: dict[str, float | None] = field(default_factory=dict)  # ctr, peak_velocity_cm_s...
    box: tuple[int, int, int, int] | None = None  # where denoising is scored (echo: the strip)
    # Real images: the image with noise added and its denoising (a pass of its own; phantoms
    # are drawn noisy, and their prediction holds the denoised image)
    noisy: np.ndarray | None = None
    denoised: np.ndarray | None = None


def evaluate(bundle: Bundle, *, out: Path, n: int | None = None, seed: int = HELD_OUT_SEED,
             data: Sequence[Path] = (), split: str = "all",
             records: Sequence[dict[str, Any]] | None = None, size: int | None = None,
             device: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Score `bundle` on `n` cases and write out/report.md, out/report.json and PNG plots.

    `data`: real data set folders (umsrep_core.data.open_dataset) instead of phantoms, each
    limited to its `split` of patients ("validation": those training holds out) and to its
    first `n` images (default all; phantoms: default 40); `size`: a fixed phantom size
    instead of realistic ones (tests); `records`: training runs (record.json of
    umsrep_core.training.runs: name, strategy, steps, losses, tflop, seconds, metrics,
    pretrain_tflop...) for the loss plot, the strategy plot and table.
    Returns the report's JSON object.
    """
    predictor = Predictor(bundle, device=device)
    modality = bundle.modality
    plugin = pipeline(modality)
    if data:
        sets = [_open_dataset(modality, folder, split) for folder in data]
        sizes = [len(d) if n is None else min(n, len(d)) for d in sets]
        made: Iterator[_Case] = itertools.chain.from_iterable(_dataset_cases(predictor, d, k)
                                             for d, k in zip(sets, sizes, strict=True))
        total = sum(sizes)
        source = "; ".join(f"data set {d.root}, {split} split ({k} images)"
                           for d, k in zip(sets, sizes, strict=True))
    else:
        total = 40 if n is None else n
        made = (_phantom_case(predictor, plugin.phantom_case(s, size))
                for s in range(seed, seed + total))
        source = f"held-out phantoms, seeds {seed}..{seed + total - 1}"
    # a chest case at its own 1k-3k pixels, denoised in tiles, takes seconds
    cases = list(tqdm(made, total=total, desc=f"evaluate {modality}", unit="case",
                      disable=not progress))
    if not cases:
        raise InferenceError(f"nothing to evaluate in {source}")
    metrics, curves = _aggregate(cases, predictor)
    gates = _gates(metrics, plugin.gates, real=bool(data))
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(cases, curves, records, predictor, out)
    summaries = [_record_summary(r) for r in records or []]
    report: dict[str, Any] = {
        "bundle": bundle.manifest["name"], "modality": modality, "source": source,
        "n": len(cases), "clinical_use": bundle.manifest["clinical_use"], "metrics": metrics,
        "gates": gates, "passed": all(g["passed"] is not False for g in gates), "plots": plots,
        "records": summaries, "joint_to_gates": joint_to_gates(summaries),
        "cases": [_case_row(c) for c in cases]}
    report = _finite(report)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(_markdown(report), encoding="utf-8")
    return report


# --- cases ----------------------------------------------------------------------------------


def _phantom_case(predictor: Predictor, phantom: PhantomCase) -> _Case:
    return _Case(id=phantom.id, image=read_frames(phantom.dataset)[0],
                 prediction=predictor.predict_dicom(phantom.dataset)[0], masks=phantom.masks,
                 label=phantom.label, clean=phantom.clean, truth=phantom.truth, box=phantom.box)


def _open_dataset(modality: str, folder: Path, which: str) -> ImageSet:
    from umsrep_core.data import open_dataset, split  # noqa: PLC0415

    if not pipeline(modality).real_data:
        held = " or ".join(n for n in names() if pipeline(n).real_data)
        raise InferenceError(f"the real data set loaders hold no {modality} images: use a "
                             f"{held} bundle")
    return split(open_dataset(folder), which)


def _dataset_cases(predictor: Predictor, data: ImageSet, n: int) -> Iterator[_Case]:
    """The first `n` samples of a real data set, scored. The denoiser, when the bundle has
    one, is scored on the image with Gaussian noise of VALIDATION_NOISE added (the image as
    the data set holds it is the clean reference), in a pass of its own: the analysis heads
    see the image as it is."""
    from umsrep_core.training.radiographs import VALIDATION_NOISE  # noqa: PLC0415

    analysis = [h for h in predictor.heads if h != "denoise"]
    for index in range(n):
        sample = data[index]
        truth = predictor.pipeline.truth(sample.masks)
        prediction = predictor.predict_array(sample.image, heads=analysis,
                                             pixel_spacing=sample.pixel_spacing_mm)
        case = _Case(id=sample.id, image=sample.image, masks=sample.masks, label=sample.label,
                     prediction=prediction, truth=truth)
        if "denoise" in predictor.heads:
            rng = np.random.default_rng(zlib.crc32(sample.id.encode()))
            noise = rng.normal(0, VALIDATION_NOISE, sample.image.shape)
            case.noisy = np.clip(sample.image + noise, 0, 1).astype(np.float32)
            case.denoised = predictor.predict_array(case.noisy, heads=["denoise"]).denoised
            case.clean = sample.image
        yield case


# --- scores ---------------------------------------------------------------------------------


def _aggregate(cases: list[_Case], predictor: Predictor
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    metrics: dict[str, Any] = {"dice": {}}
    for name in predictor.seg_labels:
        values = [dice(c.prediction.masks[name], c.masks[name]) for c in cases
                  if name in c.masks and name in c.prediction.masks]
        if values:
            metrics["dice"][name] = float(np.mean(values))
    curves: dict[str, Any] = {}
    labelled = [c for c in cases if c.label is not None and c.prediction.probabilities]
    if labelled:
        probs = np.array([[c.prediction.probabilities[k] for k in predictor.class_labels]
                          for c in labelled])
        labels = np.array([c.label for c in labelled])
        if probs.shape[1] == 2:
            metrics["auc"] = auc(probs[:, 1], labels)
            curves[predictor.class_labels[1]] = roc_curve(probs[:, 1], labels)
        else:
            metrics["auc"] = auc_ovr(probs, labels)
            curves.update({name: roc_curve(probs[:, k], labels == k)
                           for k, name in enumerate(predictor.class_labels)
                           if 0 < (labels == k).sum() < labels.size})
        metrics["accuracy"] = float(np.mean(probs.argmax(axis=1) == labels))
    metrics.update(_denoising(cases))
    metrics.update(_measurement_errors(cases, predictor.pipeline.value_errors))
    return metrics, curves


def _denoising(cases: list[_Case]) -> dict[str, float]:
    rows = []
    for c in cases:
        denoised = c.prediction.denoised if c.denoised is None else c.denoised
        if c.clean is None or denoised is None:
            continue
        y0, x0, y1, x1 = c.box or (0, 0, *c.image.shape)
        noisy, den, clean = (a[y0:y1, x0:x1] for a in (
            c.image if c.noisy is None else c.noisy, denoised, c.clean))
        rows.append((psnr(noisy, clean), psnr(den, clean), ssim(noisy, clean),
                     ssim(den, clean)))
    if not rows:
        return {}
    pn, pd, sn, sd = (float(v) for v in np.mean(np.array(rows), axis=0))
    return {"psnr_noisy_db": pn, "psnr_denoised_db": pd, "psnr_gain_db": pd - pn,
            "ssim_noisy": sn, "ssim_denoised": sd, "ssim_gain": sd - sn}


def _measurement_errors(cases: list[_Case], value_errors: Mapping[str, tuple[str, str]]
                        ) -> dict[str, Any]:
    """Per metric of the pipeline's value_errors: the mean and largest error of a value
    against its truth, and how many cases went unmeasured."""
    out: dict[str, Any] = {}
    for key, (name, kind) in value_errors.items():
        error = abs_error if kind == "abs" else rel_error
        scored = [c for c in cases if c.truth.get(name) is not None]
        if not scored:
            continue
        errors = [error(c.prediction.measurements.get(name), c.truth[name]) for c in scored]
        values = [e for e in errors if e is not None]
        # A value the model failed to measure is not an error of zero: count it apart.
        out[key] = float(np.mean(values)) if values else None
        out[f"{key}_max"] = float(np.max(values)) if values else None
        out[f"{name}_unmeasured"] = len(errors) - len(values)
    return out


def _case_row(case: _Case) -> dict[str, Any]:
    """One case in report.json: enough to find the failures behind a mean."""
    p = case.prediction
    return {"id": case.id, "label": case.label, "predicted": p.label,
            "probability": p.probability,
            "dice": {k: dice(p.masks[k], m) for k, m in case.masks.items() if k in p.masks},
            "truth": dict(case.truth),
            "measured": {k: p.measurements.get(k) for k in case.truth}}


def gate_passed(op: str, threshold: float, value: float) -> bool:
    """Whether `value` reaches a gate: op ">=" (at least) or "<=" (at most) `threshold`."""
    return value >= threshold if op == ">=" else value <= threshold


def _gates(metrics: dict[str, Any], gates_of: Mapping[str, tuple[str, float]], *, real: bool
           ) -> list[dict[str, Any]]:
    """Each gate with passed True, False, or None (n/a: real data without that ground truth)."""
    gates = []
    for key, (op, threshold) in gates_of.items():
        group, name = ("dice", key.split(".")[1]) if "." in key else (None, key)
        scores = metrics["dice"] if group else metrics
        value = scores.get(name)
        passed: bool | None = value is not None and not math.isnan(value) and gate_passed(
            op, threshold, value)
        if real and name not in scores:
            passed = None
        gates.append({"metric": key, "value": value, "op": op, "threshold": threshold,
                      "passed": passed})
    return gates


# --- output ---------------------------------------------------------------------------------


def overlay(image: np.ndarray, masks: dict[str, np.ndarray], alpha: float = 0.4) -> np.ndarray:
    """An RGB float image: `image` in gray with each mask tinted in its own colour."""
    rgb = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=2).astype(np.float32)
    for index, mask in enumerate(masks.values()):
        colour = _COLOURS[index % len(_COLOURS)].astype(np.float32)
        m = np.asarray(mask, dtype=bool)
        rgb[m] = (1 - alpha) * rgb[m] + alpha * colour
    return rgb


def _plots(cases: list[_Case], curves: dict[str, Any],
           records: Sequence[dict[str, Any]] | None, predictor: Predictor, out: Path
           ) -> list[str]:
    import matplotlib as mpl  # noqa: PLC0415 - plotting only here

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    written = []
    shown = sorted(cases, key=lambda c: not c.masks)[:_OVERLAYS]  # those with references
    fig, axes = plt.subplots(len(shown), 2, figsize=(8, 4 * len(shown)), squeeze=False)
    for row, case in zip(axes, shown, strict=True):
        p = case.prediction
        row[0].imshow(overlay(case.image, p.masks))
        row[0].set_title(f"{case.id}: predicted {p.label} ({p.probability or 0:.2f})",
                         fontsize=8)
        row[1].imshow(overlay(case.image, case.masks))
        row[1].set_title("ground truth", fontsize=8)
        for ax in row:
            ax.axis("off")
    written.append(_save(fig, out / "overlays.png"))
    if curves:
        fig, ax = plt.subplots(figsize=(5, 5))
        for name, (fpr, tpr, _) in curves.items():
            ax.plot(fpr, tpr, label=f"{name} (AUC {_auc_of(fpr, tpr):.3f})")
        ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
        ax.set(xlabel="false positive rate", ylabel="true positive rate",
               title=f"ROC ({predictor.modality})")
        ax.legend(fontsize=7)
        written.append(_save(fig, out / "roc.png"))
    with_losses = [r for r in records or [] if r.get("losses")]
    if with_losses:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for r in with_losses:
            losses = np.asarray(r["losses"], dtype=float)
            window = max(1, len(losses) // 40)  # a moving average: one batch's loss is noisy
            smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
            ax.plot(np.arange(window, len(losses) + 1), smooth,
                    label=f"{r.get('name')} ({r.get('strategy')})")
        ax.set(xlabel="step", ylabel="training loss (moving average)", yscale="log",
               title="loss curves")
        ax.legend(fontsize=6, ncol=2)
        written.append(_save(fig, out / "loss_curves.png"))
    summaries = [_record_summary(r) for r in records or []]
    if any(r["tflop"] is not None for r in summaries):
        written.append(_strategy_plot(plt, summaries, out / "strategies.png"))
    plt.close("all")
    return written


def _auc_of(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Trapezoidal area under ROC points (equals the rank AUC for roc_curve's points)."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path.name


def _record_summary(record: dict[str, Any]) -> dict[str, Any]:
    """A training record without its loss history (plotted, too long for the table)."""
    losses = record.get("losses") or []
    keys = ("name", "strategy", "steps", "seconds", "tflop", "pretrain_seconds",
            "pretrain_tflop", "gates_step", "tflop_to_gates")
    return {**{k: record.get(k) for k in keys}, "final_loss": losses[-1] if losses else None,
            "metrics": dict(record.get("metrics") or {})}


def _compute(record: dict[str, Any], unit: str) -> float | None:
    """A run's training compute in `unit` ("tflop" or "seconds"), its pretraining included."""
    own = record.get(unit)
    return None if own is None else own + (record.get(f"pretrain_{unit}") or 0)


def _separate_total(records: Sequence[dict[str, Any]], unit: str) -> float:
    """What the separate single-task models (strategy "separate ...") cost together."""
    return sum(_compute(r, unit) or 0 for r in records if _is_separate(r))


def _is_separate(record: dict[str, Any]) -> bool:
    return str(record["strategy"]).lower().startswith("separate")


def _is_pretrain(record: dict[str, Any]) -> bool:
    return str(record["strategy"]).lower().startswith("pretrain")


def _to_gates(record: dict[str, Any], *, pretraining: bool = True) -> float | None:
    """TFLOP a run took to first meet every gate of its heads, its pretraining included
    unless `pretraining` is False; None when it never did."""
    own = record.get("tflop_to_gates")
    if own is None:
        return None
    return float(own) + (record.get("pretrain_tflop") or 0 if pretraining else 0)


def _separate_to_gates(records: Sequence[dict[str, Any]]) -> tuple[float, bool] | None:
    """TFLOP the separate models took, together, to meet their gates, and whether that is a
    lower bound: a model that never met its gates counts its whole budget, which it would
    have had to exceed. None without separate models."""
    separate = [r for r in records if _is_separate(r)]
    if not separate:
        return None
    spent = [_to_gates(r) for r in separate]
    return (sum(t if t is not None else _compute(r, "tflop") or 0.0
                for t, r in zip(spent, separate, strict=True)),
            any(t is None for t in spent))


def joint_to_gates(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The joint multi-task fine-tuning that met every gate with the least compute, against
    the separate models' compute to theirs (issue 4: at most half); None when no joint run
    met them or there are no separate models. The ratio counts the fine-tuning;
    `ratio_with_pretraining` adds the unsupervised pretraining of its representation, which
    is learned once per modality and shared by every fine-tuning of it (0 for a multi-task
    model from scratch).
    `upper_bound`: a separate model never met its gates in its budget, so the ratios are at
    most these."""
    separate = _separate_to_gates(records)
    joint = [(t, r) for r in records if not _is_separate(r) and not _is_pretrain(r)
             and (t := _to_gates(r, pretraining=False)) is not None]
    if separate is None or not joint:
        return None
    tflop, best = min(joint, key=lambda pair: pair[0])
    pretrain = best.get("pretrain_tflop") or 0.0
    total, bound = separate
    return {"run": best["name"], "strategy": best["strategy"], "tflop": tflop,
            "pretrain_tflop": pretrain, "separate_tflop": total, "upper_bound": bound,
            "ratio": tflop / total, "ratio_with_pretraining": (tflop + pretrain) / total}


def _strategy_plot(plt: Any, records: list[dict[str, Any]], path: Path) -> str:
    """Training compute against the separate models, and the validation metrics, per run."""
    runs = [r for r in records if not _is_pretrain(r)]
    separate = _separate_total(runs, "tflop") or 1.0
    metrics = sorted({k for r in runs for k, v in r["metrics"].items()
                      if isinstance(v, int | float) and not isinstance(v, bool)})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.45 * len(runs) + 1.5),
                                      sharey=True)
    y = np.arange(len(runs))
    own = [(r["tflop"] or 0) / separate for r in runs]
    pre = [(r["pretrain_tflop"] or 0) / separate for r in runs]
    left.barh(y, own, label="fine-tuning / training")
    left.barh(y, pre, left=own, label="pretraining (shared)")
    to_gates = [np.nan if (t := _to_gates(r, pretraining=False)) is None else t / separate
                for r in runs]
    left.plot(to_gates, y, "k|", markersize=14, markeredgewidth=2,
              label="every gate first met (fine-tuning)")
    left.axvline(0.5, color="k", linestyle=":", linewidth=0.8)
    left.set(yticks=y, yticklabels=[r["strategy"] for r in runs], xlabel="training compute "
             "(FLOP) / the three separate models'", title="compute")
    left.invert_yaxis()
    left.legend(ncol=2, **_below(left))
    width = 0.8 / max(1, len(metrics))
    for k, name in enumerate(metrics):
        scale = 10.0 if name == "psnr_gain_db" else 1.0  # dB next to scores in [0, 1]
        values = [r["metrics"].get(name, np.nan) / scale for r in runs]
        right.barh(y + (k - (len(metrics) - 1) / 2) * width, values, height=width,
                   label=f"{name} / 10" if scale != 1 else name)
    right.set(xlabel="validation score", title="held-out set, model grid")
    right.legend(ncol=3, **_below(right))
    return _save(fig, path)


def _below(ax: Any) -> dict[str, Any]:
    """Legend placement under an axes' x label (36 points down), off the bars it would hide."""
    from matplotlib.transforms import ScaledTranslation  # noqa: PLC0415 - with the plots

    drop = ScaledTranslation(0, -36 / 72, ax.figure.dpi_scale_trans)
    return {"fontsize": 7, "loc": "upper center", "bbox_to_anchor": (0.5, 0),
            "bbox_transform": ax.transAxes + drop}


def _finite(value: Any) -> Any:
    """NaN and infinities as None: JSON has no such numbers."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def verdict(passed: bool | None) -> str:
    """A gate's result as the report and the CLI print it."""
    return "n/a" if passed is None else "PASS" if passed else "FAIL"


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _markdown(report: dict[str, Any]) -> str:
    m = report["metrics"]
    lines = [f"# Evaluation of bundle `{report['bundle']}` ({report['modality']})", "",
             f"{report['clinical_use']}.", "", f"Source: {report['source']}.", "",
             f"**Overall: {'PASS' if report['passed'] else 'FAIL'}**", "",
             "## Gates", "", "| metric | value | gate | result |", "|---|---|---|---|"]
    lines += [f"| {g['metric']} | {_fmt(g['value'])} | {g['op']} {g['threshold']:g} | "
              f"{verdict(g['passed'])} |" for g in report["gates"]]
    lines += ["", "## Metrics (means over cases)", "", "| metric | value |", "|---|---|"]
    lines += [f"| dice.{k} | {_fmt(v)} |" for k, v in m["dice"].items()]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in m.items() if k != "dice"]
    if report["records"]:
        lines += _records_table(report["records"], report["joint_to_gates"])
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]]
    return "\n".join(lines) + "\n"


def _best_line(best: dict[str, Any]) -> str:
    at_most = "at most " if best["upper_bound"] else ""
    line = (f"{at_most}**{best['ratio']:.2f}** ({best['run']}, {best['tflop']:.4g} TFLOP "
            f"against {best['separate_tflop']:.4g})")
    if best["pretrain_tflop"]:
        line += (f"; with the unsupervised pretraining of its representation "
                 f"({best['pretrain_tflop']:.4g} TFLOP, learned once per modality and shared "
                 f"by every fine-tuning of it): {at_most}{best['ratio_with_pretraining']:.2f}")
    if best["upper_bound"]:
        line += (". A separate model never met its gates: its whole budget is counted, which "
                 "it would have had to exceed")
    return line + "."


def _records_table(records: list[dict[str, Any]], best: dict[str, Any] | None) -> list[str]:
    """Fine-tuning strategies and separate models side by side, with their training compute
    relative to the separate models' total; `best`: joint_to_gates."""
    separate = {u: _separate_total(records, u) for u in ("tflop", "seconds")}
    separate_to_gates = (_separate_to_gates(records) or (0.0, False))[0]
    lines = ["", "## Training strategies", "",
             "Compute to the end of each run includes the shared pretraining run where there "
             "is one; seconds compare only runs trained alike (same machine, threads and "
             "neighbours), FLOP always. Validation on the held-out set (phantoms, or the data "
             "sets' validation split) as a served bundle sees it, every few steps: *to gates* "
             "is the compute until the first validation that met every gate of the run's "
             "heads, fine-tuning alone, then with the pretraining.",
             "", "Joint multi-task fine-tuning against the three separate models, to the same "
             "gates (goal: at most half): " + (_best_line(best) if best else
                                                "not measured: no multi-task run met its "
                                                "gates, or no separate model ran."),
             "", "| run | strategy | steps | TFLOP | vs separate | seconds | vs separate | "
             "to gates (step) | to gates TFLOP | vs separate | with pretraining |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        cells = []
        for unit in ("tflop", "seconds"):
            value = _compute(r, unit)
            cells += [_fmt(value), _fmt(value / separate[unit])
                      if separate[unit] and value is not None else "n/a"]
        own, total = _to_gates(r, pretraining=False), _to_gates(r)
        cells += [_fmt(r.get("gates_step")) if own is not None else "never", _fmt(own)]
        cells += [_fmt(t / separate_to_gates) if t is not None and separate_to_gates
                  else "n/a" for t in (own, total)]
        lines.append(f"| {r['name']} | {r['strategy']} | {_fmt(r['steps'])} | "
                     f"{' | '.join(cells)} |")
    lines += ["", "Validation metrics at the end of each run:", "",
              "| run | metrics |", "|---|---|"]
    lines += ["| {} | {} |".format(r["name"], ", ".join(
        f"{k} {_fmt(v)}" for k, v in r["metrics"].items() if k != "gates_met"))
        for r in records]
    return lines
