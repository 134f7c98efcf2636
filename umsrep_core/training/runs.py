"""Training runs: the two stages of UMS-Rep, resumable, each in its own directory.

    pretrain   the representation: encoder + reconstruction decoder on corrupted images, no
               labels (data.corrupt: the image with noise and hidden patches as the input,
               the image itself the target);
    finetune   task heads on a pretrained encoder (`init`), which is kept "frozen", "partial"ly
               unfrozen (its last blocks) or "full"y fine-tuned; heads trained "joint"ly (the
               weighted multi-task loss) or "sequential"ly (one head after the other, the steps
               shared out equally); without `init`, a model trained from scratch (one head:
               the separate single-task baseline).

A run directory holds spec.json, checkpoint.pt (written every `save_every` steps, on Ctrl-C and
at the end: model, optimiser, schedule, phantom pool and random states, so a resumed run takes
exactly the steps an uninterrupted one would) and, once finished, record.json: the losses, the
training compute (floating-point operations as torch counts them, which no other load on
the machine changes, and seconds of optimisation, data generation excluded: every run needs the
same phantoms) and the held-out validation metrics, which `umsrep model evaluate --runs` tabulates.
With `data` (real data set folders: radiographs.py) a run trains on their train split and
validates on their validation split; without, on the modality's phantoms.
A run is validated every `val_every` steps as well, a copy of the model with its batch norms'
statistics recomputed over the pool (`refresh_batchnorm`; the model itself at the end, so that
its export is what was scored): the first validation that meets every gate of its heads gives
the compute it took to reach them (`gates_step`, `tflop_to_gates`, the refreshes counted).
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from umsrep_core.errors import UmsrepError
from umsrep_core.evaluation.metrics import auc, auc_ovr, dice, psnr
from umsrep_core.evaluation.report import gate_passed
from umsrep_core.inference import default_device, synchronize
from umsrep_core.models.umsrep import HEADS, STRATEGIES, ModelConfig, UMSRep, set_trainable
from umsrep_core.pipelines import names, pipeline
from umsrep_core.pipelines.cxr import OTHER_AT
from umsrep_core.training.data import (
    DENOISE_GRID,
    Batch,
    HeldOut,
    PhantomPool,
    corrupt,
    held_out_arrays,
)
from umsrep_core.training.losses import multitask_loss
from umsrep_core.training.radiographs import (
    CLASS_LABELS,
    OTHER,
    RadiographPool,
    radiograph_held_out,
)

__all__ = ["SCHEDULES", "STAGES", "RunSpec", "TrainingError", "export", "gates_met",
           "load_record", "refresh_batchnorm", "run_model", "train", "validate"]

STAGES = ("pretrain", "finetune")
SCHEDULES = ("joint", "sequential")
SPEC, CHECKPOINT, RECORD = "spec.json", "checkpoint.pt", "record.json"
VALIDATION_SEED = 2_000_000  # held out: training pools start at seed * 1_000_000, seed < 2


class TrainingError(UmsrepError):
    """A run cannot start or go on: a bad spec, a clash with an existing run, a bad init."""


@dataclass(frozen=True)
class RunSpec:
    modality: str
    stage: str = "finetune"
    heads: tuple[str, ...] = HEADS
    strategy: str = "full"  # what of the `init` encoder trains; "full" from scratch
    schedule: str = "joint"
    init: str | None = None  # a pretrain run directory
    steps: int = 800
    batch: int = 16
    image_size: int = 128
    pool: int = 256
    seed: int = 0
    lr: float = 3e-3
    # ModelConfig fields (width, depth...); stored resolved, so that a run keeps its
    # architecture when the code's defaults change.
    model: dict[str, Any] = field(default_factory=dict)
    # Real data set folders (chest: jsrt-scr, nih-cxr8...) to train on, their train split;
    # validated on their validation split. Empty: the modality's phantoms.
    data: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        choices = {"modality": (self.modality, names()), "stage": (self.stage, STAGES),
                   "strategy": (self.strategy, STRATEGIES),
                   "schedule": (self.schedule, SCHEDULES)}
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise TrainingError(f"{name} {value!r}: choose one of {', '.join(allowed)}")
        if not self.heads or any(h not in HEADS for h in self.heads):
            raise TrainingError(f"heads {list(self.heads)}: choose among {', '.join(HEADS)}")
        if self.stage == "pretrain" and (self.heads != ("denoise",) or self.init):
            raise TrainingError("pretrain trains the encoder and its reconstruction decoder "
                                "from scratch: heads ('denoise',), no init")
        if self.init is None and self.strategy != "full":
            raise TrainingError(f"strategy {self.strategy!r} needs a pretrained encoder (init)")
        if min(self.steps, self.batch, self.pool) < 1 or self.batch > self.pool:
            raise TrainingError("steps, batch and pool must be positive, batch <= pool")
        if self.data and not pipeline(self.modality).real_data:
            raise TrainingError(f"the real data sets hold no {self.modality} images: --data "
                                "needs " + " or ".join(n for n in names()
                                                       if pipeline(n).real_data))
        seg, classes = self.labels
        try:
            # real radiographs are standardised image by image (ModelConfig.standardise)
            resolved = ModelConfig.from_dict({"standardise": bool(self.data), **self.model,
                                              "n_seg": len(seg), "n_classes": len(classes),
                                              "input_size": self.image_size})
        except (TypeError, ValueError) as exc:
            raise TrainingError(f"model {self.model}: {exc}") from exc
        object.__setattr__(self, "model", resolved.to_dict())

    @property
    def labels(self) -> tuple[list[str], list[str]]:
        """The segmentation and class labels: the modality's, or with real radiographs
        radiographs.CLASS_LABELS (normal, pneumonia, and other: not a chest radiograph)."""
        plugin = pipeline(self.modality)
        return list(plugin.seg_labels), CLASS_LABELS if self.data else list(plugin.class_labels)

    @property
    def label(self) -> str:
        """The name of the strategy in reports; "separate ..." marks a single-task baseline."""
        if self.stage == "pretrain":
            return "pretrain (unsupervised)"
        if self.init is None:
            return f"separate {self.heads[0]}" if len(self.heads) == 1 else \
                f"scratch {self.schedule}"
        return f"{self.strategy} {self.schedule}"

    def config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.model)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "heads": list(self.heads), "data": list(self.data)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSpec:
        return cls(**{**data, "heads": tuple(data["heads"]),
                      "data": tuple(data.get("data", ()))})


def load_record(run: Path) -> dict[str, Any]:
    path = run / RECORD
    if not path.is_file():
        raise TrainingError(f"{run}: no {RECORD}: the run has not finished (resume it)")
    record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return record


def run_model(run: Path, device: str = "cpu") -> tuple[UMSRep, RunSpec]:
    """A finished run's model (eval mode) and its spec."""
    load_record(run)
    spec = RunSpec.from_json(json.loads((run / SPEC).read_text(encoding="utf-8")))
    model = UMSRep(spec.config(), heads=spec.heads)
    model.load_state_dict(_load_checkpoint(run)["model"])
    return model.to(device).eval(), spec


def export(run: Path, out: Path, *, name: str, version: str = "0.1.0") -> Path:
    """A finished fine-tuning run as a bundle in directory `out`."""
    from umsrep_core.models.bundle import save_bundle  # noqa: PLC0415 - export only

    model, spec = run_model(run)
    if spec.stage == "pretrain":
        raise TrainingError(f"{run} is a pretrain run: it has no task heads to serve; "
                            "fine-tune it first")
    seg, classes = spec.labels
    steps = load_record(run)["steps"]
    if steps < spec.steps:
        raise TrainingError(f"{run} stopped at its gates after {steps} of {spec.steps} steps "
                            "(a compute measurement): resume it to its budget to export it")
    origin = f", on the encoder of pretrain run {spec.init}" if spec.init else ""
    source = (f"real radiographs, the train split of {', '.join(Path(d).name for d in spec.data)}"
              " (umsrep_core.data.split)" if spec.data else
              "synthetic phantoms (umsrep_core.phantoms)")
    return save_bundle(model, {
        "name": name, "version": version, "modality": spec.modality, "seg_labels": seg,
        "class_labels": classes, "normalisation": {},
        "denoise_grid": DENOISE_GRID,
        "training_data": f"{source}, seed {spec.seed}: {spec.label}, {steps} steps of "
                         f"{spec.batch} at {spec.image_size} px{origin}"}, out)


def train(spec: RunSpec, out: Path, *, resume: bool = False, device: str | None = None,
          progress: bool = True, save_every: int = 100, val: int | None = None,
          val_every: int = 100, stop_after: int | None = None,
          stop_at_gates: bool = False) -> dict[str, Any] | None:
    """Run `spec` in directory `out`; returns its record, or None when `stop_after` steps (a
    test's interruption) ended it early with a checkpoint to resume from. `val`: held-out
    phantoms to validate on (default the pipeline's validation_phantoms). `stop_at_gates`:
    end the run at the first validation that meets every gate, its record holding the steps
    taken (a measurement of the compute to the gates: resumed without it, the run continues
    to its budget exactly as an uninterrupted one)."""
    dev = torch.device(device or default_device())
    _claim(spec, out, resume)
    if resume and (out / RECORD).is_file():
        record = load_record(out)
        if stop_at_gates or record["steps"] == spec.steps:
            return record
    torch.manual_seed(spec.seed)
    model = UMSRep(spec.config(), heads=spec.heads)
    if spec.init is not None:
        _load_init(model, Path(spec.init))
        set_trainable(model, spec.strategy)
    # channels-last: a CPU convolution of few channels runs nearly twice as fast in it
    model.to(dev, memory_format=torch.channels_last).train()  # type: ignore[call-overload]
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=spec.lr, weight_decay=1e-4)
    pool = _pool(spec)
    pretext = torch.Generator().manual_seed(spec.seed)
    phases = _phases(spec)
    saved = _load_checkpoint(out) if resume and (out / CHECKPOINT).is_file() else None
    state: dict[str, Any] = {"step": 0, "losses": [], "seconds": 0.0, "validations": []}
    if saved is not None:
        model.load_state_dict(saved["model"])
        pool.load_state_dict(saved["pool"])
        pretext.set_state(saved["pretext_rng"])
        torch.set_rng_state(saved["torch_rng"])
        state = {k: saved[k] for k in state}
    held_out = _validation_set(spec.modality, pipeline(spec.modality).validation_phantoms
                               if val is None else val, spec.image_size, spec.data)
    start = state["step"]
    schedule = _schedule(optimiser, spec, phases, start, saved)

    def checkpoint() -> None:
        _save_checkpoint(out, {
            **state, "model": model.state_dict(), "optimiser": optimiser.state_dict(),
            "schedule": schedule.state_dict(), "pool": pool.state_dict(),
            "pretext_rng": pretext.get_state(), "torch_rng": torch.get_rng_state()})

    step_fn = _step_function(spec, model, pretext, dev)
    span_flops = [(first, end, _step_flops(model, spec, heads, dev))
                  for first, end, heads in _spans(spec, phases)]

    # Each validation first recomputes the batch norms' statistics over the pool (forward
    # passes of every head): compute that the model it scores took, counted with the steps.
    refresh_tflop = _step_flops(model, spec, model.tasks, dev, backward=False) * len(pool) \
        / spec.batch / 1e12

    def tflop_until(step: int) -> float:
        refreshes = sum(1 for v in state["validations"] if v["step"] <= step)
        return refreshes * refresh_tflop + sum(
            flops * (min(end, step) - first) for first, end, flops in span_flops
            if first < step) / 1e12

    def validation(*, final: bool = False) -> dict[str, Any]:
        done = state["validations"]
        if done and done[-1]["step"] == state["step"]:  # resumed after the last one
            return dict(done[-1]["metrics"])
        # Mid-run on a copy, so that how often a run is validated does not change its
        # training; at the end on the model itself, so that its export is what was scored.
        scored = model if final else copy.deepcopy(model)
        refresh_batchnorm(scored, pool.refresh_images(spec.batch), spec.batch, dev)
        metrics = validate(scored, spec, held_out, device=dev)
        done.append({"step": state["step"], "metrics": metrics})
        model.train()
        return metrics

    def first_met() -> int | None:
        return next((v["step"] for v in state["validations"] if v["metrics"]["gates_met"]),
                    None)

    bar = tqdm(range(state["step"], spec.steps), initial=state["step"], total=spec.steps,
               desc=f"{spec.stage} {spec.modality} {spec.label}", disable=not progress)
    try:
        for step in bar:
            if stop_at_gates and first_met() is not None:
                break
            if step in phases and step > start:  # a sequential phase starts
                schedule = _schedule(optimiser, spec, phases, step)
            batch = pool.sample(spec.batch)
            started = time.perf_counter()
            loss = step_fn(batch, _phase_of(phases, step))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            synchronize(dev)
            state["seconds"] += time.perf_counter() - started
            state["losses"].append(float(loss.item()))
            state["step"] = step + 1
            bar.set_postfix(loss=f"{state['losses'][-1]:.3f}")
            if state["step"] % val_every == 0 and state["step"] < spec.steps:
                validation()
            if state["step"] % save_every == 0:
                checkpoint()
            if stop_after is not None and state["step"] >= stop_after:
                checkpoint()
                return None
    except KeyboardInterrupt:
        checkpoint()
        raise
    bar.close()
    stopped = state["step"] < spec.steps
    metrics = state["validations"][-1]["metrics"] if stopped else validation(final=True)
    checkpoint()
    model.eval()
    reached = first_met()
    record = {"name": out.name, "strategy": spec.label, "stage": spec.stage,
              "heads": list(spec.heads), "steps": state["step"], "batch": spec.batch,
              "seconds": round(state["seconds"], 3), "tflop": tflop_until(state["step"]),
              "device": str(dev), "losses": state["losses"], "metrics": metrics,
              "validations": state["validations"], "gates_step": reached,
              "tflop_to_gates": None if reached is None else tflop_until(reached)}
    if spec.init is not None:  # the representation's cost, shared by every fine-tuning of it
        init = load_record(Path(spec.init))
        record["pretrain_seconds"], record["pretrain_tflop"] = init["seconds"], init["tflop"]
    _write_json(out / RECORD, record)
    return record


def gates_met(modality: str, metrics: dict[str, Any]) -> bool:
    """Whether every metric that has a gate of the modality (issue 4's) reaches it."""
    gates = pipeline(modality).gates
    return all(gate_passed(*gates[key], value) for key, value in metrics.items() if key in gates)


def refresh_batchnorm(model: UMSRep, images: np.ndarray, batch: int,
                      device: torch.device | str = "cpu") -> None:
    """Recompute the running statistics of the batch norms that train, as the plain mean of
    their batch statistics over `images` (the training pool) in batches of `batch`, every
    head run, with the weights as they are ("precise BN"). The running averages trail the
    weights: at the fine-tuning's peak learning rate, a chest joint model validated with them
    scored heart Dice 0.46 and AUC 0.50 at step 300, with recomputed ones 0.91 and 0.85."""
    model.train()  # frozen norms stay in eval mode (UMSRep.train) and keep their statistics
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.training]
    if not norms:
        return
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: every batch counts the same
    with torch.no_grad():
        for chunk in np.split(images, range(batch, len(images), batch)):
            model(torch.from_numpy(chunk).to(device), heads=model.tasks)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train()


def validate(model: UMSRep, spec: RunSpec, held_out: HeldOut, *,
             device: torch.device | str = "cpu") -> dict[str, Any]:
    """The held-out phantoms (held_out_arrays) scored per head the model has, as `evaluate`
    scores: Dice per label (over the images that have the structure), AUC, PSNR gain on the
    denoiser's grid; `gates_met` says whether every gate of those heads is reached."""
    def run(images: np.ndarray, heads: tuple[str, ...]) -> dict[str, np.ndarray]:
        if not heads:
            return {}
        parts: dict[str, list[np.ndarray]] = {h: [] for h in heads}
        model.eval()
        for chunk in np.split(images, range(64, len(images), 64)):  # bounded memory
            with torch.inference_mode():
                out = model(torch.from_numpy(chunk).to(device), heads=heads)
            for k, v in out.items():
                parts[k].append(v.float().cpu().numpy())
        return {k: np.concatenate(v) for k, v in parts.items()}

    out = {**run(held_out.images, tuple(h for h in model.tasks if h != "denoise")),
           **run(held_out.noisy_tiles, tuple(h for h in model.tasks if h == "denoise"))}
    metrics: dict[str, Any] = {}
    seg, classes = spec.labels
    if "segment" in out:
        predicted, truth = out["segment"] > 0, held_out.masks > 0.5  # NaN (unknown): none
        for j, name in enumerate(seg):
            # As `evaluate` scores: an image without the structure (a strip that is not
            # spectral Doppler has no envelope) has no mask to score.
            scored = [dice(predicted[i, j], truth[i, j]) for i in range(len(truth))
                      if truth[i, j].any()]
            if scored:
                metrics[f"dice.{name}"] = float(np.mean(scored))
        metrics.update(pipeline(spec.modality).mask_metrics(predicted, truth))
    if "classify" in out:
        probs = torch.softmax(torch.from_numpy(out["classify"]), dim=1).numpy()
        if spec.data:
            metrics.update(_radiograph_class_metrics(probs, held_out.labels))
        else:
            metrics["auc"] = (auc(probs[:, 1], held_out.labels) if len(classes) == 2
                              else auc_ovr(probs, held_out.labels))
    if "denoise" in out:
        den = np.clip(out["denoise"], 0, 1)
        noisy, clean = held_out.noisy_tiles, held_out.clean_tiles
        metrics["psnr_gain_db"] = float(np.mean([psnr(den[i, 0], clean[i, 0])
                                                 - psnr(noisy[i, 0], clean[i, 0])
                                                 for i in range(len(den))]))
    metrics["gates_met"] = gates_met(spec.modality, metrics)
    return metrics


# --- internals ------------------------------------------------------------------------------


def _radiograph_class_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """With the class OTHER (radiographs.py): the AUC of the classes before it, on the images
    that have one (the probability of the second given not OTHER), and the share of chest
    radiographs kept (OTHER under OTHER_AT, as the Predictor decides) and of negatives
    refused."""
    chest, other = labels != OTHER, labels == OTHER
    known = (labels >= 0) & chest
    given_chest = probs[:, 1] / np.maximum(probs[:, :OTHER].sum(axis=1), 1e-12)
    refused = probs[:, OTHER] >= OTHER_AT
    return {"auc": auc(given_chest[known], labels[known]),
            "chest_kept": float(np.mean(~refused[chest])) if chest.any() else math.nan,
            "other_refused": float(np.mean(refused[other])) if other.any() else math.nan}


def _pool(spec: RunSpec) -> PhantomPool | RadiographPool:
    if spec.data:  # pretraining learns from every kind of image
        return RadiographPool(spec.data, image_size=spec.image_size, seed=spec.seed,
                              heads=HEADS if spec.stage == "pretrain" else spec.heads)
    return PhantomPool(spec.modality, first=spec.seed * 1_000_000, size=spec.pool,
                       image_size=spec.image_size, seed=spec.seed)


@functools.lru_cache(maxsize=1)
def _validation_set(modality: str, n: int, size: int, data: tuple[str, ...] = ()) -> HeldOut:
    """The first `n` validation phantoms, or the validation split of the `data` folders,
    built once per process: the runs of a comparison all validate on them, and 256
    radiographs at their own sizes take minutes to draw."""
    if data:
        return radiograph_held_out(data, size)
    return held_out_arrays(modality, range(VALIDATION_SEED, VALIDATION_SEED + n), size)


def _claim(spec: RunSpec, out: Path, resume: bool) -> None:
    """Write spec.json, or check it against the one there: a directory is one run."""
    path = out / SPEC
    if path.is_file():
        if not resume:
            raise TrainingError(f"{out} already holds a run: pass --resume to continue it, or "
                                "choose another --out")
        saved = RunSpec.from_json(json.loads(path.read_text(encoding="utf-8")))
        if saved != spec:
            raise TrainingError(f"{out} holds a different run ({saved.label}, "
                                f"{saved.steps} steps): not resuming it as {spec.label}")
        return
    out.mkdir(parents=True, exist_ok=True)
    _write_json(path, spec.to_json())


def _load_init(model: UMSRep, init: Path) -> None:
    """The encoder (and the decoders of the same heads) of a finished pretrain run."""
    pretrained, spec = run_model(init)
    if spec.stage != "pretrain":
        raise TrainingError(f"init {init} is a {spec.stage} run, not a pretrain run")
    if replace(spec.config(), n_seg=model.config.n_seg, n_classes=model.config.n_classes
               ) != model.config:
        raise TrainingError(f"init {init}: its model configuration {spec.config()} differs "
                            f"from this run's {model.config}")
    model.load_state_dict(pretrained.state_dict(), strict=False)


def _phases(spec: RunSpec) -> dict[int, tuple[str, ...]]:
    """First step of each phase -> the heads it trains."""
    if spec.schedule == "joint" or spec.stage == "pretrain":
        return {0: spec.heads}
    share = spec.steps / len(spec.heads)
    return {round(i * share): (head,) for i, head in enumerate(spec.heads)}


def _spans(spec: RunSpec, phases: dict[int, tuple[str, ...]]
           ) -> list[tuple[int, int, tuple[str, ...]]]:
    starts = [*sorted(phases), spec.steps]
    return [(a, b, phases[a]) for a, b in itertools.pairwise(starts)]


def _step_flops(model: UMSRep, spec: RunSpec, heads: tuple[str, ...], dev: torch.device,
                *, backward: bool = True) -> int:
    """Floating-point operations of one training step (forward and backward; without
    `backward`, one batch of refresh_batchnorm), counted by torch on a copy of the model: the
    training compute, whatever else the machine runs. Dropout draws from a forked stream, not
    the run's."""
    probe = copy.deepcopy(model)
    n, size = spec.batch, spec.image_size
    batch: Batch = (torch.zeros(n, 1, size, size, device=dev),
                    torch.zeros(n, 1, size, size, device=dev),
                    torch.zeros(n, probe.config.n_seg, size, size, device=dev),
                    torch.zeros(n, dtype=torch.long, device=dev))
    with torch.random.fork_rng(devices=[]), torch.set_grad_enabled(backward), \
            FlopCounterMode(display=False) as counter:
        out = probe(batch[0], heads=heads)
        if backward:
            multitask_loss(out, batch).backward()
    return int(counter.get_total_flops())


def _phase_of(phases: dict[int, tuple[str, ...]], step: int) -> tuple[str, ...]:
    return phases[max(s for s in phases if s <= step)]


def _schedule(optimiser: torch.optim.Optimizer, spec: RunSpec, phases: dict[int, Any],
              step: int, saved: dict[str, Any] | None = None
              ) -> torch.optim.lr_scheduler.OneCycleLR:
    """One warm-up-and-anneal cycle per phase (each head of a sequential run gets its own),
    for the phase of `step`; with `saved`, the optimiser and schedule of a checkpoint."""
    spans = _spans(spec, phases)
    # A checkpoint of the last step (stopped before its record was written) is in the last.
    first, end, _ = next((span for span in spans if span[0] <= step < span[1]), spans[-1])
    if saved is not None and step == first:  # at a phase start: a fresh cycle on them
        optimiser.load_state_dict(saved["optimiser"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=spec.lr,
                                                   total_steps=end - first)
    if saved is not None and step != first:  # mid-phase: the constructor's reset undone
        optimiser.load_state_dict(saved["optimiser"])
        schedule.load_state_dict(saved["schedule"])
    return schedule


def _step_function(spec: RunSpec, model: UMSRep, pretext: torch.Generator, dev: torch.device
                   ) -> Callable[[Batch, tuple[str, ...]], torch.Tensor]:
    def pretrain_step(batch: Batch, heads: tuple[str, ...]) -> torch.Tensor:
        x = corrupt(batch[0], pretext).to(dev, memory_format=torch.channels_last)
        return F.l1_loss(model(x, heads=heads)["denoise"], batch[0].to(dev))

    def finetune_step(batch: Batch, heads: tuple[str, ...]) -> torch.Tensor:
        on_device: Batch = tuple(t.to(dev) for t in batch)  # type: ignore[assignment]
        x = on_device[0].to(memory_format=torch.channels_last)
        return multitask_loss(model(x, heads=heads), on_device)

    return pretrain_step if spec.stage == "pretrain" else finetune_step


def _save_checkpoint(out: Path, state: dict[str, Any]) -> None:
    tmp = out / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out / CHECKPOINT)  # a crash mid-write leaves the previous checkpoint


def _load_checkpoint(run: Path) -> dict[str, Any]:
    path = run / CHECKPOINT
    if not path.is_file():
        raise TrainingError(f"{run}: no {CHECKPOINT}")
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
