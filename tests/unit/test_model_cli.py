"""`umsrep model ...` through a parser built with add_model_commands, and the engines behind
them (evaluate, bench) on tiny bundles and tiny training runs."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pydicom
import pytest
from pydicom.errors import InvalidDicomError

from pacs_node.samples import cr_dataset, us_doppler_dataset, write
from tests.unit.test_inference import CXR_KEYS, ECHO_KEYS, LABELS, tiny_bundle
from umsrep_core import cli
from umsrep_core.benchmark import bench
from umsrep_core.cli import add_model_commands
from umsrep_core.errors import InferenceError
from umsrep_core.evaluation.report import evaluate
from umsrep_core.models import umsrep
from umsrep_core.models.bundle import load_bundle
from umsrep_core.training import runs
from umsrep_core.training.runs import TrainingError

BENCH_KEYS = {"shared_ms", "separate_ms", "speedup", "shared_peak_mb", "separate_peak_mb",
              "shared_gflop", "separate_gflop", "shared_params", "separate_params"}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {m: tiny_bundle(root, m) for m in LABELS}


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="umsrep")
    add_model_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["model", *argv])
    code: int = args.run(args)
    return code


def test_the_module_does_not_import_torch() -> None:
    code = ("import sys, umsrep_core.cli; "
            "sys.exit(any(m in sys.modules for m in ('torch', 'numpy')))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_predict_json_and_pngs(bundles: dict[str, Path], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    dcm = write(cr_dataset(1, rows=300, columns=260), tmp_path / "cr.dcm")
    png = tmp_path / "plain.png"
    mpimg.imsave(png, np.random.default_rng(0).random((70, 90)), cmap="gray")
    out = tmp_path / "out"
    assert run("predict", "--bundle", str(bundles["cxr"]), str(dcm), str(png), "--json",
               "--out", str(out)) == 0
    docs = json.loads(capsys.readouterr().out)
    assert [d["file"] for d in docs] == [str(dcm), str(png)]
    assert all(set(d) == CXR_KEYS | {"file", "frame"} for d in docs)
    assert all(d["areas_mm2"]["heart"] is None and d["reasons"] for d in docs)  # untrained
    names = {p.name for p in out.iterdir()}
    assert {"cr_overlay.png", "cr_denoised.png", "cr_mask_heart.png", "plain_overlay.png",
            "plain_mask_left_lung.png"} <= names
    mask = mpimg.imread(out / "cr_mask_right_lung.png")
    assert mask.shape[:2] == (300, 260)


def test_predict_doppler_text(bundles: dict[str, Path], tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    dcm = write(us_doppler_dataset(2, rows=240, columns=320), tmp_path / "us.dcm")
    assert run("predict", "--bundle", str(bundles["echo_doppler"]), str(dcm), "--json") == 0
    [doc] = json.loads(capsys.readouterr().out)
    assert set(doc) == ECHO_KEYS | {"file", "frame"}
    assert run("predict", "--bundle", str(bundles["echo_doppler"]), str(dcm)) == 0
    assert capsys.readouterr().out.startswith(f"{dcm}[1]: ")


def test_predict_rejects_a_file_that_is_neither(bundles: dict[str, Path],
                                                tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("not an image")
    with pytest.raises(InferenceError, match=r"notes\.txt"):
        run("predict", "--bundle", str(bundles["cxr"]), str(junk))


def test_predict_reads_a_bare_dataset_without_file_meta(bundles: dict[str, Path],
                                                         tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    """As fo-dicom's CR-MONO1-10-chest: no preamble, no File Meta, implicit VR."""
    ds = cr_dataset(2, rows=120, columns=100)
    del ds.file_meta
    bare = tmp_path / "bare"
    ds.save_as(bare, enforce_file_format=False, implicit_vr=True, little_endian=True)
    with pytest.raises(InvalidDicomError):
        pydicom.dcmread(bare)
    assert run("predict", "--bundle", str(bundles["cxr"]), str(bare), "--json") == 0
    [doc] = json.loads(capsys.readouterr().out)
    assert doc["file"] == str(bare) and doc["modality"] == "cxr"


def test_evaluate_command_writes_the_report(bundles: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    code = run("evaluate", "--bundle", str(bundles["echo_doppler"]), "--n", "2", "--out",
               str(out))
    assert code == 1  # an untrained model fails the gates, and says so
    assert "FAIL" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 2 and report["passed"] is False
    assert {g["metric"] for g in report["gates"]} >= {"dice.envelope", "auc",
                                                      "peak_velocity_rel_error"}


def test_evaluate_chest_with_records(bundles: dict[str, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    records = [{"name": "joint", "strategy": "full", "losses": [1.0, 0.5, 0.3], "seconds": 20.0,
                "steps": 30, "metrics": {"dice_heart": 0.9}},
               {"name": "three separate", "strategy": "separate", "losses": [1.0, 0.8],
                "seconds": 60.0, "steps": 90, "metrics": {}}]
    report = evaluate(load_bundle(bundles["cxr"]), out=tmp_path, n=3, size=96,
                      records=records)
    assert "evaluate cxr: 100%" in capsys.readouterr().err  # the progress bar, case by case
    assert set(report["metrics"]["dice"]) == set(LABELS["cxr"][0])
    for key in ("psnr_gain_db", "ssim_gain", "auc", "ctr_unmeasured"):
        assert key in report["metrics"]
    assert {p.name for p in tmp_path.glob("*.png")} == {"overlays.png", "roc.png",
                                                       "loss_curves.png"}
    markdown = (tmp_path / "report.md").read_text()
    assert "FAIL" in markdown and "NOT FOR CLINICAL USE" in markdown
    # A third of the separate models' compute, in seconds (these records count no FLOP).
    assert "| joint | full | 30 | n/a | n/a | 20 | 0.3333 |" in markdown
    saved = json.loads((tmp_path / "report.json").read_text())  # valid JSON: no NaN
    assert [c["id"] for c in saved["cases"]] == [f"chest-{s}" for s in range(1_000_000,
                                                                             1_000_003)]
    assert set(saved["cases"][0]["dice"]) == set(LABELS["cxr"][0])


def test_evaluate_on_a_generic_data_set_folder(bundles: dict[str, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks" / "heart").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for index in range(3):
        name = f"case{index}.png"
        mpimg.imsave(data / "images" / name, rng.random((80, 72)), cmap="gray")
        heart = np.zeros((80, 72))
        heart[30:60, 20:50] = 1
        mpimg.imsave(data / "masks" / "heart" / name, heart, cmap="gray")
    (data / "labels.csv").write_text("image,label\ncase0.png,0\ncase1.png,1\ncase2.png,\n")
    report = evaluate(load_bundle(bundles["cxr"]), out=tmp_path / "out", n=10, data=[data])
    assert report["n"] == 3
    assert "3/3 " in capsys.readouterr().err  # the bar counts the cases there are, not n
    assert set(report["metrics"]["dice"]) == {"heart"}  # the structures it has masks for
    assert report["metrics"]["auc"] in (0.0, 0.5, 1.0)  # the two labelled cases only
    # the denoiser is scored on noise added to the image as held, the image its reference
    assert report["metrics"]["psnr_noisy_db"] == pytest.approx(26.0, abs=0.5)
    verdicts = {g["metric"]: g["passed"] for g in report["gates"]}
    assert verdicts["dice.left_lung"] is None  # n/a: no such masks
    assert verdicts["psnr_gain_db"] is (report["metrics"]["psnr_gain_db"] >= 6)
    assert verdicts["dice.heart"] is False and report["passed"] is False
    with pytest.raises(InferenceError, match="use a cxr bundle"):  # chest loaders only
        evaluate(load_bundle(bundles["echo_doppler"]), out=tmp_path / "echo", data=[data])


def test_bench_command_and_keys(bundles: dict[str, Path],
                                capsys: pytest.CaptureFixture[str]) -> None:
    assert run("bench", "--bundle", str(bundles["cxr"]), "--json", "--iterations", "2",
               "--device", "cpu") == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= BENCH_KEYS
    assert result["separate_params"] > result["shared_params"]
    assert result["shared_ms"] > 0 and result["speedup"] > 0
    # Three encoders against one: more than twice the operations, less than three times.
    assert 2 < result["separate_gflop"] / result["shared_gflop"] < 3
    direct = bench(load_bundle(bundles["echo_doppler"]), device="cpu", iterations=1, batch=2)
    assert direct["batch"] == 2 and direct["shared_peak_mb"] > 0


def test_pretrain_finetune_export_and_evaluate_with_runs(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    tiny = ["--steps", "3", "--batch", "2", "--size", "64", "--width", "4", "--val", "2"]
    pre, fine = tmp_path / "pre", tmp_path / "fine"
    assert run("pretrain", "--modality", "cxr", "--out", str(pre), *tiny) == 0
    assert run("finetune", "--modality", "cxr", "--out", str(fine), "--init", str(pre),
               "--strategy", "partial", "--schedule", "sequential", *tiny) == 0
    assert run("finetune", "--modality", "cxr", "--out", str(fine), "--init", str(pre),
               "--strategy", "partial", "--schedule", "sequential", "--resume", *tiny) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("pre: pretrain (unsupervised), 3 steps")
    assert lines[1].startswith("fine: partial sequential, 3 steps") and lines[2] == lines[1]
    assert run("export", "--run", str(fine), "--out", str(tmp_path / "bundle")) == 0
    assert "NOT FOR CLINICAL USE" in capsys.readouterr().out
    assert load_bundle(tmp_path / "bundle").manifest["name"] == "fine"
    report = tmp_path / "report"
    run("evaluate", "--bundle", str(tmp_path / "bundle"), "--n", "1", "--runs", str(pre),
        str(fine), "--out", str(report))
    assert "| fine | partial sequential | 3 |" in (report / "report.md").read_text()


def test_compare_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny = ("--steps", "2", "--batch", "2", "--size", "64", "--width", "4", "--unshuffle",
            "2", "--n", "1", "--val", "2")
    assert run("compare", "--modality", "echo_doppler", "--out", str(tmp_path), *tiny,
               "--runs", "frozen-joint,scratch-joint,separate-classify", "--seed", "3") == 0
    out = capsys.readouterr().out
    assert "separate-classify: separate classify, 2 steps" in out
    # 2 steps: never
    assert "joint fine-tuning against separate, to the same gates: not measured" in out
    # the pretraining came along for frozen-joint; nothing else of the grid ran
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bundle", "frozen-joint", "pretrain", "report", "scratch-joint", "separate-classify"]
    assert "scratch-joint" in (tmp_path / "bundle" / "manifest.json").read_text()
    specs = [json.loads((tmp_path / run / "spec.json").read_text())
             for run in ("pretrain", "frozen-joint", "separate-classify")]
    assert {(s["seed"], s["model"]["width"], s["model"]["unshuffle"]) for s in specs} == {
        (3, 4, 2)}
    with pytest.raises(TrainingError, match="no run separate-measure in the grid"):
        run("compare", "--modality", "cxr", "--out", str(tmp_path / "x"), *tiny,
            "--runs", "separate-measure")


def test_a_finetune_without_init_cannot_keep_a_frozen_encoder(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="needs a pretrained encoder"):
        run("finetune", "--modality", "cxr", "--out", str(tmp_path), "--strategy", "frozen")


def test_the_cli_names_agree_with_the_model_code() -> None:
    assert (cli.HEADS, cli.STRATEGIES, cli.SCHEDULES) == (
        umsrep.HEADS, umsrep.STRATEGIES, runs.SCHEDULES)
