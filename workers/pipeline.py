"""`process_study(journal, config, study_key, route)`: the UMS-Rep pipeline for one study.

A plain function, called alike by the Celery task and by the node's embedded pool (entry
point `umsrep.handlers` / `umsrep.process_study`). It reads the study's instances from the
spool through the journal, keeps the images its pipeline applies to (and says why it left the
others), runs the bundle's encoder once per image for every head, writes SEG, TID 1500 SR and,
if asked, denoised images, and queues them in the outbox for the route's destinations. Every
output's UIDs derive from its inputs, so running a study twice writes the same files again,
and the outbox sends a file to a destination once.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import time
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from pacs_node.config import Config, Process
from pacs_node.dispatch import JobJournal
from pacs_node.spool import file_name, output_name, write_durably
from umsrep_core.errors import InferenceError, RoutingError, StudySkipped
from umsrep_core.inference import Frame, Prediction, Predictor, default_device
from umsrep_core.models.bundle import load_bundle
from umsrep_core.pipelines import pipeline
from workers.metrics import STAGES
from workers.outputs.derived import build_denoised, frames_of
from workers.outputs.seg import build_seg
from workers.outputs.sources import unusable
from workers.outputs.sr import build_sr

log = logging.getLogger(__name__)

@functools.lru_cache(maxsize=4)
def predictor(bundle: str) -> Predictor:
    """The bundle's predictor, loaded once per process and kept warm."""
    return Predictor(load_bundle(bundle, device=default_device()))


def job_process(journal: JobJournal, config: Config, study_key: str, route: str) -> Process:
    """The settings the job was queued with; the rule's current ones for a job that an older
    version queued without them."""
    process = journal.job_process(study_key, route)
    if process is not None:
        return process
    for rule in config.routing.rules:
        if rule.name == route and rule.process is not None:
            return rule.process
    raise RoutingError(f"no process rule named {route!r} in the configuration")


def heads_for(process: Process, available: tuple[str, ...]) -> tuple[str, ...]:
    """The heads a route's outputs need: the denoising head only for a denoised image."""
    return tuple(h for h in available if h != "denoise" or "denoised" in process.outputs)


def outputs_for(source: Dataset, prediction: Prediction, process: Process, model_name: str,
                model_version: str) -> list[Dataset]:
    modality = process.pipeline
    objects: list[Dataset] = []
    if {"seg", "sr"} & set(process.outputs):
        seg = build_seg(source, prediction.masks, model_name=model_name,
                        model_version=model_version, modality=modality)
        if "seg" in process.outputs:
            objects.append(seg)
        if "sr" in process.outputs:
            objects.append(build_sr(source, seg, prediction.to_json(), model_name=model_name,
                                    model_version=model_version, modality=modality))
    if "denoised" in process.outputs and prediction.denoised is not None:
        objects.append(build_denoised(source, prediction.denoised, model_name=model_name,
                                      model_version=model_version))
    return objects


def write_output(ds: Dataset, folder: Path) -> Path:
    path = folder / output_name(ds)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    folder.mkdir(parents=True, exist_ok=True)
    write_durably(path, lambda f: f.write(buffer.getbuffer()))
    return path


def process_study(journal: JobJournal, config: Config, study_key: str, route: str,
                  process: Process | None = None) -> None:
    """`process`: the route's settings as the task message carries them; else the journal's."""
    process = process or job_process(journal, config, study_key, route)
    started = time.perf_counter()
    model = predictor(process.bundle or process.pipeline)
    name, version = str(model.bundle.manifest["name"]), str(model.bundle.manifest["version"])
    journal.note_stage(study_key, "load", time.perf_counter() - started, f"bundle {name} {version}")
    study = journal.study(study_key)
    assert study is not None, study_key
    folder = config.node.data_dir / "outputs" / file_name(study.study_uid)
    written: list[Path] = []
    skipped: list[str] = []
    seconds = dict.fromkeys(STAGES[1:], 0.0)  # preprocess, inference, postprocess, writing
    heads = heads_for(process, model.heads)
    batch: list[tuple[Dataset, Dataset]] = []  # (image to build on, the instance it is of)

    def skip(source: Dataset, ds: Dataset, why: str) -> None:
        frame = "" if source is ds else f" frame {source.InstanceNumber}"
        skipped.append(f"{ds.SOPInstanceUID}{frame}: {why}")

    def run_batch() -> None:
        """Images in batches (decoded, then one encoder pass per image, every head), then
        their outputs: a study of any size holds no more than a batch of decoded images at
        a time."""
        t_decode = time.perf_counter()
        taken: list[tuple[Dataset, Dataset]] = []
        frames: list[Frame] = []
        for source, ds in batch:
            try:
                [frame] = model.frames(source)  # frames_of gives single-frame images
            except InferenceError as exc:  # pixel data that no installed decoder reads
                skip(source, ds, str(exc))
                continue
            taken.append((source, ds))
            frames.append(frame)
        seconds["preprocess"] += time.perf_counter() - t_decode
        predictions = model.predict_frames(frames, heads=heads)
        for stage, spent in model.timings.items():
            seconds[stage] += spent
        t_write = time.perf_counter()
        for (source, ds), prediction in zip(taken, predictions, strict=True):
            if prediction.not_applicable is not None:  # the model does not know this image
                skip(source, ds, prediction.not_applicable)
                continue
            journal.note(study_key, "findings", json.dumps(
                {"sop_instance_uid": str(source.SOPInstanceUID), **prediction.to_json()}))
            objects = outputs_for(source, prediction, process, name, version)
            if source is not ds:
                objects.insert(0, source)  # the frame image that SEG and SR reference
            written.extend(write_output(o, folder) for o in objects)
            log.info("study %s: %s %s, %d outputs", study_key, process.pipeline,
                     prediction.label, len(objects))
        seconds["writing"] += time.perf_counter() - t_write
        batch.clear()

    for instance in journal.instances(study_key):
        t_read = time.perf_counter()
        ds = pydicom.dcmread(instance.path)
        why = pipeline(process.pipeline).not_applicable(ds) or unusable(ds)
        try:
            sources = frames_of(ds) if why is None else []
        except InferenceError as exc:  # a multi-frame image's pixel data no decoder reads
            sources, why = [], str(exc)
        seconds["preprocess"] += time.perf_counter() - t_read
        if why is not None:
            skip(ds, ds, why)
        for source in sources:
            batch.append((source, ds))
            if len(batch) == model.batch_size:
                run_batch()
    if batch:
        run_batch()
    if skipped:
        journal.note(study_key, "skipped images", "; ".join(skipped))
    if not written:
        raise StudySkipped("nothing the pipeline applies to: " + "; ".join(skipped))
    # preprocess: reading, selecting, decoding and letterboxing images; inference: the forward
    # pass of every head; postprocess: outputs back to the source grid, measurements.
    for stage, spent in seconds.items():
        journal.note_stage(study_key, stage, spent,
                           f"{len(written)} objects" if stage == "writing" else "")
    for destination in process.destinations:
        journal.enqueue(study_key, destination, written)
