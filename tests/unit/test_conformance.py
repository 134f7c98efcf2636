"""The DICOM Conformance Statement (docs/conformance.md) is what the code says: written by
`python -m workers.conformance`, compared here, so that it cannot drift."""

from __future__ import annotations

from workers.conformance import OUT, render


def test_the_committed_conformance_statement_is_the_code_s() -> None:
    assert OUT.read_text(encoding="utf-8") == render(), (
        "docs/conformance.md is out of date: run `python -m workers.conformance`")


def test_it_names_what_the_node_answers_and_every_pipeline_s_codes() -> None:
    text = render()
    for expected in ("0xA700", "0x0122", "2, 3, 2", "Segmentation Storage",
                     "Comprehensive SR Storage", "### Pipeline `cxr`",
                     "### Pipeline `echo_doppler`", "(80891009, SCT, \"Heart\")",
                     "(11726-7, LN, \"Peak Velocity\")", "STOW-RS"):
        assert expected in text, expected
