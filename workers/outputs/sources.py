"""Source images as received, and what our outputs need of them.

Real images are not always conformant; our outputs must be. Here:
- `unusable`: why no valid output can be built on an image (no pixels, UIDs that outputs
  could not validly reference, frames that no copy to build on can hold), or None;
- `needs_copy`: whether outputs are built on Secondary Capture copies of the image's frames
  (`derived.build_frame_image`: a multi-frame image, a retired or private SOP class, an
  RT image without NumberOfFrames);
- `conformed`: the image as highdicom reads it to build every output: the Type 2 patient and
  study attributes it copies present, and empty where the modality left them out or sent a
  value its VR does not allow (a birth date 1970-01-01), as a Type 2 attribute may be: such a
  value must neither fail a job nor reach an error message; and a Specific Character Set
  in a form highdicom takes;
- `lossy_marking`: its lossy compression stated in full, as every image derived from it
  must state it;
- `instance_number`, `patient_orientation`: the image's, as valid outputs repeat them;
- `conforms`: whether a value is valid for its VR.
"""

from __future__ import annotations

import copy
import re
from itertools import islice

from pydicom import config
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.multival import MultiValue
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    JPEG2000MC,
    UID,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    RTImageStorage,
    XRayAngiographicImageStorage,
    XRayRadiofluoroscopicImageStorage,
)
from pydicom.valuerep import validate_value

from pacs_node.spool import is_valid_uid

# The pixel layout (and its defaults) that decides whether frames can be copied to build on.
LAYOUT = (("BitsAllocated", 0), ("SamplesPerPixel", 1), ("PixelRepresentation", 0),
          ("NumberOfFrames", 1))
REFERENCED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# Classes whose IOD has the Multi-frame module as Type 1C: a single-frame image may leave
# NumberOfFrames out, which highdicom (0.28) reads wherever the IOD has it (AttributeError).
FRAMES_1C = frozenset({RTImageStorage, XRayAngiographicImageStorage,
                       XRayRadiofluoroscopicImageStorage})
# The Specific Character Sets highdicom (0.28, valuerep._check_specific_character_set) takes:
# one plain term, or code extensions whose first is single-byte.
PLAIN_CHARSETS = frozenset({"ISO_IR 100", "ISO_IR 101", "ISO_IR 109", "ISO_IR 110", "ISO_IR 126",
                            "ISO_IR 127", "ISO_IR 13", "ISO_IR 138", "ISO_IR 144", "ISO_IR 148",
                            "ISO_IR 166", "ISO_IR 192", "ISO_IR 203", "GB18030", "GBK"})
SINGLE_BYTE_EXTENSIONS = frozenset(f"ISO 2022 IR {n}" for n in (
    6, 100, 101, 109, 110, 126, 127, 13, 138, 144, 148, 166, 203))
MULTI_BYTE_EXTENSIONS = frozenset({"ISO 2022 IR 87", "ISO 2022 IR 159"})
# Patient (C.7.1.1) and General Study (C.7.2.1) Type 2 attributes: highdicom reads them
# unconditionally (a Fuji CR of 1995 has no Patient ID), and our outputs carry them as well.
TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
# PS3.3 C.7.6.1.1.5: an image once lossy compressed stays "01" whatever syntax it travels in
# now, and so do images derived from its pixels (our SEG and Secondary Captures), with the
# ratio and method, Type 1C in a SEG. JPEG baseline and extended are lossy whatever an image
# says; JPEG-LS near-lossless and JPEG 2000 where their stream says so (`_lossy_stream`); the
# method of each syntax that may be lossy (PS3.3 C.7.6.1.1.5.1):
ALWAYS_LOSSY = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit})
LOSSY_METHODS = {JPEGBaseline8Bit: "ISO_10918_1", JPEGExtended12Bit: "ISO_10918_1",
                 JPEGLSNearLossless: "ISO_14495_1", JPEG2000: "ISO_15444_1",
                 JPEG2000MC: "ISO_15444_2", HTJ2K: "ISO_15444_15"}


def unusable(ds: Dataset) -> str | None:
    """Why no valid output can be built on `ds`, or None.

    The node stores what a PACS stores: images without pixel data (character set test
    objects), images whose UIDs do not conform (hex strings from anonymisers, leading
    zeros), which our outputs would have to repeat, and be invalid, a pixel layout that is
    not numbers, and frames that no Secondary Capture copy can hold (a 32-bit dose grid).
    """
    if not ds.get("PixelData"):
        return "no pixel data"
    bad = [name for name in REFERENCED_UIDS if not is_valid_uid(str(ds.get(name, "")))]
    if bad:
        verb = "is not a valid UID" if len(bad) == 1 else "are not valid UIDs"
        return f"{', '.join(bad)} {verb}: outputs that reference it would be invalid DICOM"
    try:
        bits, samples, representation, _frames = (int(ds.get(name, "") or default) for
                                                   name, default in LAYOUT)
    except (TypeError, ValueError):
        return f"{', '.join(name for name, _ in LAYOUT)}: not all whole numbers"
    colour, signed = samples > 1, representation == 1
    if needs_copy(ds) and (signed or bits not in ((8,) if colour else (8, 16))):
        return (f"its frames are {bits}-bit {'signed ' if signed else ''}"
                f"{'colour' if colour else 'grey'}, which no Secondary Capture copy to build "
                "outputs on can hold (8 or 16-bit unsigned grey, 8-bit colour)")
    return None


def needs_copy(ds: Dataset) -> bool:
    """Whether outputs are built on a Secondary Capture copy of each of the image's frames
    (`derived.build_frame_image`): highdicom builds SEG on single-frame images of the SOP
    classes it knows only (not a retired one, such as Ultrasound Image Storage
    1.2.840.10008.5.1.4.1.1.6), and not on one that leaves out a NumberOfFrames it reads
    (`FRAMES_1C`: an RT image)."""
    frames = ds.get("NumberOfFrames")
    return (int(frames or 1) > 1 or not highdicom_knows(ds)
            or (frames is None and ds.SOPClassUID in FRAMES_1C))


def highdicom_knows(ds: Dataset) -> bool:
    """highdicom builds on images of the current standard's public SOP classes only."""
    sop_class = UID(str(ds.SOPClassUID))
    return not sop_class.is_private and not sop_class.is_retired and bool(sop_class.type)


def instance_number(ds: Dataset) -> int:
    """The image's Instance Number for its outputs, which highdicom takes positive only: 1
    where it has none, 0 (some vendors count from it) or one that is no number (IS `1A`)."""
    try:
        return max(1, int(ds.get("InstanceNumber") or 1))
    except (TypeError, ValueError):
        return 1


def patient_orientation(ds: Dataset) -> list[str] | None:
    """The image's two directions (A, P, R, L, H, F, or several: `FL` down and to the left),
    or None where it has no valid ones."""
    orientation = ds.get("PatientOrientation")
    if orientation and len(orientation) == 2 and all(
            re.fullmatch("[APRLHF]+", str(d)) for d in orientation):
        return [str(d) for d in orientation]
    return None


def conforms(vr: str, value: object) -> bool:
    """Whether `value` (one value, or several) is valid for `vr` (length, characters, form
    of a date or time). pydicom's message would quote the value: it is dropped."""
    values = value if isinstance(value, list | tuple) else [value]
    try:
        for one in values:
            validate_value(vr, "" if one is None else str(one), config.RAISE)
    except ValueError:
        return False
    return True


def lossy_marking(ds: Dataset) -> dict[str, object]:
    """The Lossy Image Compression attributes of `ds` and of the images derived from it:
    none where it was never lossy compressed; else "01", with its own ratio and method, or
    where it left them out or empty (a JPEG image of fo-dicom's corpus: ratio empty) and holds
    the lossy stream itself, the ratio of the pixels' size to that stream's and the method
    its syntax names."""
    meta = getattr(ds, "file_meta", None)
    syntax = UID(str(meta.get("TransferSyntaxUID", "")) if meta is not None else "")
    if (ds.get("LossyImageCompression") != "01" and syntax not in ALWAYS_LOSSY
            and not _lossy_stream(ds, syntax)):
        return {}
    marking: dict[str, object] = {"LossyImageCompression": "01"}
    ratio = ds.get("LossyImageCompressionRatio") or _stream_ratio(ds, syntax)
    method = ds.get("LossyImageCompressionMethod") or LOSSY_METHODS.get(syntax)
    if ratio:
        marking["LossyImageCompressionRatio"] = ratio
    if method:
        marking["LossyImageCompressionMethod"] = method
    return marking


def _lossy_stream(ds: Dataset, syntax: UID) -> bool:
    """Whether the first frame's stream, of a syntax that holds lossless and lossy streams,
    says it is lossy, as GDCM reads it: JPEG-LS with an error bound (NEAR) above 0 (real
    near-lossless files leave LossyImageCompression out), JPEG 2000 with the irreversible 9-7
    wavelet. False where it cannot tell."""
    if syntax not in LOSSY_METHODS or syntax in ALWAYS_LOSSY or not ds.get("PixelData"):
        return False
    try:
        stream = next(islice(generate_fragments(ds.PixelData), 1, None))  # after the offsets
        if syntax == JPEGLSNearLossless:  # ISO 14495-1 C.2.3: SOS holds NEAR after its
            scan = _segment(stream, 2, b"\xff\xda")  # components' two bytes each
            return scan is not None and stream[scan + 5 + 2 * stream[scan + 4]] > 0
        start = stream.find(b"\xff\x4f\xff\x51")  # SOC, SIZ: past a JP2 file's boxes
        if start < 0:
            return False
        coding = _segment(stream, start + 2, b"\xff\x52", until=b"\xff\x90")  # COD, SOT
        return coding is not None and stream[coding + 13] == 0  # ISO 15444-1 A.6.1: 0 is 9-7
    except (StopIteration, IndexError, ValueError):
        return False


def _segment(stream: bytes, offset: int, marker: bytes, until: bytes = b"") -> int | None:
    """The offset of the first `marker` segment of a JPEG-family header from `offset` on,
    stepping over each segment by its length, or None where `until` or the end comes first."""
    while offset + 4 <= len(stream):
        found = stream[offset:offset + 2]
        if found == marker:
            return offset
        if found == until:
            return None
        offset += 2 + int.from_bytes(stream[offset + 2:offset + 4], "big")
    return None


def _stream_ratio(ds: Dataset, syntax: UID) -> str | None:
    """The pixels' size over their encapsulated stream's, or None where the pixel data is no
    stream of a lossy syntax, or one that cannot be measured."""
    if syntax not in LOSSY_METHODS or not ds.get("PixelData"):
        return None
    try:
        fragments = list(generate_fragments(ds.PixelData))[1:]  # the first: the offset table
        pixels = (int(ds.get("NumberOfFrames", 1) or 1) * int(ds.Rows) * int(ds.Columns)
                  * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8)
    except (AttributeError, TypeError, ValueError):
        return None
    stream = sum(map(len, fragments))
    return f"{pixels / stream:.4g}" if stream and pixels else None


def conformed(source: Dataset) -> Dataset:
    """`source`, or a copy of it (a deep copy: a pydicom Dataset's shallow copy shares its
    elements with the original) whose `TYPE2_COPIED` attributes missing or not valid for
    their VR are empty and whose Specific Character Set is one highdicom takes
    (`highdicom_charset`)."""
    emptied = [name for name in TYPE2_COPIED
               if name not in source or not conforms(source[name].VR, source[name].value)]
    charset = source.get("SpecificCharacterSet")
    taken = highdicom_charset(charset)
    if not emptied and taken == charset:
        return source
    complete = copy.deepcopy(source)
    for name in emptied:
        setattr(complete, name, "")
    if taken is None and charset is not None:
        del complete.SpecificCharacterSet
    elif taken != charset:
        complete.SpecificCharacterSet = taken
    return complete


def highdicom_charset(value: str | MultiValue[str] | None) -> str | list[str] | None:
    """A Specific Character Set as highdicom (0.28) takes it, for the names pydicom decoded
    with `value`: highdicom refuses an empty value 1 of several, which PS3.3 C.12.1.1.2 reads
    as ISO 2022 IR 6 (a Japanese CR's `\\ISO 2022 IR 87`), an empty value, a term it does not
    know, and ISO 2022 terms used alone or plain ones mixed with them; those are written in
    UTF-8, which holds any decoded name. None: the default repertoire (also ISO_IR 6, which
    highdicom does not take)."""
    terms = [str(v) for v in (value if isinstance(value, MultiValue | list) else [value or ""])]
    if not any(terms) or terms == ["ISO_IR 6"]:
        return None
    if len(terms) == 1:
        return terms[0] if terms[0] in PLAIN_CHARSETS else "ISO_IR 192"
    terms[0] = terms[0] or "ISO 2022 IR 6"
    if terms[0] in SINGLE_BYTE_EXTENSIONS and all(
            t in SINGLE_BYTE_EXTENSIONS | MULTI_BYTE_EXTENSIONS for t in terms[1:]):
        return terms
    return "ISO_IR 192"
