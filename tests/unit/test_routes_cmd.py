"""`umsrep routes check` and `routes test` on real (small, pixel-less) DICOM files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    UltrasoundImageStorage,
    generate_uid,
)

from pacs_node import routes_cmd
from pacs_node.config import DEFAULTS_FILE
from tests.conftest import shared_data
from umsrep_core.errors import ConfigError

PATIENT = ("Doe^Jane", "PID-4711", "19700101")  # must never be printed
CR_STUDY, US_STUDY, CT_STUDY = "1.2.826.0.1.1", "1.2.826.0.1.2", "1.2.826.0.1.3"

NO_CATCH_ALL = """\
destinations:
  results: {folder: results}
  pacs: {ae_title: PACS, host: 127.0.0.1, port: 104}
routing:
  apply: all
  rules:
    - name: chest
      match: {modality: [CR, DX]}
      process: {pipeline: cxr, destinations: [results]}
    - name: doppler
      match: {modality: [US], spectral_doppler: true}
      process: {pipeline: echo_doppler, outputs: [sr], destinations: [results]}
    - name: archive-us
      match: {modality: [US]}
      forward: {destinations: [pacs]}
"""


def write_instance(path: Path, study_uid: str, modality: str, sop_class: UID,
                   doppler: bool = False) -> None:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT
    if doppler:
        region = Dataset()
        region.RegionSpatialFormat = 3  # spectral
        region.RegionDataType = 3  # PW spectral Doppler
        ds.SequenceOfUltrasoundRegions = [region]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture
def studies(tmp_path: Path) -> Path:
    """A folder: a CR, a US with a spectral Doppler region, a CT one level down, a text file."""
    root = tmp_path / "in"
    write_instance(root / "cr.dcm", CR_STUDY, "CR", ComputedRadiographyImageStorage)
    write_instance(root / "us.dcm", US_STUDY, "US", UltrasoundImageStorage, doppler=True)
    write_instance(root / "deeper" / "ct", CT_STUDY, "CT", CTImageStorage)
    (root / "notes.txt").write_text("not a DICOM file\n")
    return root


def assert_no_patient_data(text: str) -> None:
    for value in (*PATIENT, "Doe", "Jane"):
        assert value not in text


def test_check_prints_a_summary(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert routes_cmd.check(DEFAULTS_FILE) == 0
    assert capsys.readouterr().out == (
        f"OK: {DEFAULTS_FILE}: 3 rules (apply: first), destinations: results\n")
    path = tmp_path / "rules.yaml"
    path.write_text(NO_CATCH_ALL)
    assert routes_cmd.check(path) == 0
    assert capsys.readouterr().out == (
        f"OK: {path}: 3 rules (apply: all), destinations: results, pacs\n")


def test_check_resolves_bundles_and_folders_and_names_the_rule(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "example.yaml"
    with pytest.raises(ConfigError, match=r"rule 'chest-xray': no bundle directory "
                                          r"/opt/models/cxr-v2"):
        routes_cmd.check(example)  # a placeholder: a node would fail every chest study
    path = tmp_path / "rules.yaml"
    path.write_text(NO_CATCH_ALL.replace("pipeline: cxr,", "pipeline: cxr, bundle: echo_doppler,")
                    .replace("{folder: results}", f"{{folder: {tmp_path / 'rules.yaml' / 'x'}}}"))
    with pytest.raises(ConfigError) as caught:
        routes_cmd.check(path)
    assert str(caught.value).splitlines() == [
        f"{path}: rule 'chest': bundle echo_doppler is a model for 'echo_doppler', the "
        "pipeline is 'cxr'",
        f"{path}: destination 'results': {tmp_path / 'rules.yaml' / 'x'} cannot be written "
        f"({path} is not a writable folder)"]


def test_check_raises_the_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(NO_CATCH_ALL.replace("pipeline: cxr", "pipeline: mri"))
    with pytest.raises(ConfigError,
                       match=r"bad\.yaml:9: routing\.rules\.0\[chest\]\.process\.pipeline"):
        routes_cmd.check(path)


def test_dry_run_text_on_the_packaged_defaults(capsys: pytest.CaptureFixture[str],
                                               studies: Path) -> None:
    assert routes_cmd.test(None, [studies]) == 0
    out, err = capsys.readouterr()
    assert err == f"skipped {studies / 'notes.txt'}: not DICOM (no StudyInstanceUID)\n"
    blocks = out.strip().split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == [
        f"study {CR_STUDY}: 1 instance, modalities: CR",  # files in path order
        f"study {CT_STUDY}: 1 instance, modalities: CT",
        f"study {US_STUDY}: 1 instance, modalities: US",
    ]
    cr, ct, us = (b.splitlines()[1:] for b in blocks)
    assert ct == ["  no    chest-xray    modality CT not in [CR, DX]",
                  "  no    echo-doppler  modality CT not in [US]",
                  "                      no instance with a spectral Doppler region",
                  "  MATCH store-only    no conditions: matches every study",
                  "  -> store-only: ignore"]
    assert cr[0] == "  MATCH chest-xray    modality CR in [CR, DX]"
    assert cr[-1] == "  -> chest-xray: process pipeline cxr (seg, sr) -> results"
    assert us[1:3] == ["  MATCH echo-doppler  modality US in [US]",
                       "                      spectral Doppler region present"]
    assert us[-1] == "  -> echo-doppler: process pipeline echo_doppler (seg, sr) -> results"
    assert_no_patient_data(out + err)


def test_dry_run_json(capsys: pytest.CaptureFixture[str], studies: Path, tmp_path: Path
                      ) -> None:
    config = tmp_path / "rules.yaml"
    config.write_text(NO_CATCH_ALL)
    files = [studies / "cr.dcm", studies / "us.dcm", studies / "deeper", studies / "nothing"]
    assert routes_cmd.test(config, files, as_json=True) == 0
    out, err = capsys.readouterr()
    assert err == f"skipped {studies / 'nothing'}: not found\n"
    cr, us, ct = json.loads(out)
    assert cr == {
        "study_instance_uid": CR_STUDY, "instances": 1, "modalities": ["CR"],
        "rules": [
            {"name": "chest", "matched": True, "reasons": ["modality CR in [CR, DX]"]},
            {"name": "doppler", "matched": False, "reasons": [
                "modality CR not in [US]", "no instance with a spectral Doppler region"]},
            {"name": "archive-us", "matched": False, "reasons": ["modality CR not in [US]"]},
        ],
        "applied": ["chest"],
        "actions": ["process pipeline cxr (seg, sr) -> results"],
    }
    assert us["applied"] == ["doppler", "archive-us"]  # apply: all
    assert us["actions"] == ["process pipeline echo_doppler (sr) -> results",
                             "forward -> pacs"]
    assert (ct["study_instance_uid"], ct["applied"]) == (CT_STUDY, [])
    assert ct["actions"] == ["store only (no rule matched)"]
    assert_no_patient_data(out)


def test_dry_run_groups_instances_by_study(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    for i in range(3):
        write_instance(tmp_path / f"{i}.dcm", CR_STUDY, "DX" if i else "CR",
                       ComputedRadiographyImageStorage)
    routes_cmd.test(None, [tmp_path], as_json=True)
    [study] = json.loads(capsys.readouterr().out)
    assert (study["instances"], study["modalities"]) == (3, ["CR", "DX"])
    assert study["rules"][0]["reasons"] == [
        "modality CR in [CR, DX]",
        "body_part (empty) matches '(?i)^$|chest|thorax|t[oó]rax|torace|lung'",
        "view_position (empty) matches '(?i)^(PA|AP)?$'",
        "3 of 3 instances match"]


def test_dry_run_without_dicom_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert routes_cmd.test(None, [tmp_path]) == 0
    assert capsys.readouterr().out == "no DICOM files found\n"


def test_calling_ae_stands_for_the_sender(capsys: pytest.CaptureFixture[str], studies: Path,
                                          tmp_path: Path) -> None:
    config = tmp_path / "rules.yaml"
    config.write_text("routing:\n  rules:\n    - name: from-mod1\n"
                      "      match: {calling_ae: [MOD1], called_ae: [UMSREP]}\n"
                      "      ignore: {}\n")
    routes_cmd.test(config, [studies / "cr.dcm"], as_json=True)
    assert json.loads(capsys.readouterr().out)[0]["applied"] == []
    routes_cmd.test(config, [studies / "cr.dcm"], as_json=True, calling_ae="MOD1")
    assert json.loads(capsys.readouterr().out)[0]["applied"] == ["from-mod1"]
    routes_cmd.test(config, [studies / "cr.dcm"], as_json=True, calling_ae="MOD1",
                    called_ae="OTHER")
    assert json.loads(capsys.readouterr().out)[0]["applied"] == []


def test_a_real_chest_goes_to_cxr_and_the_same_file_as_an_extremity_does_not(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # A Fuji CR of a chest, PA (no File Meta header); then the same file saying EXTREMITY, as
    # the tibia of issue 21 did: the packaged defaults store that one only.
    chest = shared_data("dicom-corpus", "fo-dicom") / "CR-MONO1-10-chest"
    ds = dcmread(chest, force=True)
    assert (ds.BodyPartExamined, ds.ViewPosition) == ("CHEST", "PA")
    ds.BodyPartExamined = "EXTREMITY"
    ds.save_as(tmp_path / "tibia")
    routes_cmd.test(None, [chest], as_json=True)
    [report] = json.loads(capsys.readouterr().out)
    assert report["applied"] == ["chest-xray"]
    routes_cmd.test(None, [tmp_path / "tibia"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert "  no    chest-xray    body_part 'EXTREMITY' does not match " \
           "'(?i)^$|chest|thorax|t[oó]rax|torace|lung'" in lines
    assert lines[-1] == "  -> store-only: ignore"
