"""DICOM pixel data to display-oriented float32 frames in [0, 1], and the pixel spacing.

The pipeline follows the grayscale standard display chain (PS3.4 N.2): stored values ->
modality LUT (or rescale) -> VOI LUT (or window) -> MONOCHROME1 inversion, so that bright means
dense / high signal as a reader sees it. Colour images (RGB, YBR_*, PALETTE COLOR) are already
display values: they go to RGB and then to luminance (Rec. 601 weights, those of YBR).

Without a VOI transform a grayscale frame is stretched min-max, except 8-bit frames with no
modality transform: those are screen captures (ultrasound), whose values are the display.
Enhanced multi-frame objects carry rescale and window per frame in functional groups; those
override the top-level attributes frame by frame.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, convert_color_space, get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ImplicitVRLittleEndian

from umsrep_core.errors import InferenceError

__all__ = ["LUMINANCE", "pixel_spacing", "read_frames", "stored_pixels"]

LUMINANCE = np.array([0.299, 0.587, 0.114], dtype=np.float64)  # Rec. 601, as in YBR_FULL
_MONO = ("MONOCHROME1", "MONOCHROME2")
_FRAME_GROUPS = {  # functional group -> attributes it may override (PS3.3 C.7.6.16.2)
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction"),
}


def read_frames(ds: Dataset) -> list[np.ndarray]:
    """Every frame of `ds` as a float32 (Rows, Columns) array in [0, 1], bright = high signal.

    Raises InferenceError when the pixel data are missing or cannot be decoded.
    """
    arr, photometric = _decode(ds)
    samples = int(ds.get("SamplesPerPixel", 1))
    if arr.ndim == (3 if samples > 1 else 2):  # one frame: give it the frame axis
        arr = arr[np.newaxis]
    colour = samples > 1 or photometric == "PALETTE COLOR"
    if colour:
        return [_colour_to_gray(frame, ds, photometric) for frame in arr]
    if photometric not in _MONO:
        raise InferenceError(f"unsupported Photometric Interpretation {photometric!r}")
    return [_gray_to_display(frame, view, photometric)
            for frame, view in zip(arr, _frame_views(ds, len(arr)), strict=True)]


def stored_pixels(ds: Dataset) -> np.ndarray:
    """Every frame of `ds` as stored, colour as RGB: (frames,) rows, columns (, 3), the frame
    axis only where NumberOfFrames is over 1. Raises InferenceError as read_frames does."""
    return _decode(ds)[0]


def pixel_spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str | None]:
    """(row, column) spacing in mm and None, or None and the reason there is none.

    PixelSpacing (patient plane; top level or the shared Pixel Measures functional group) is
    preferred; ImagerPixelSpacing (detector plane, no magnification correction) comes next.
    """
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    measures = _first_item(shared, "PixelMeasuresSequence") if shared is not None else None
    candidates = [("PixelSpacing", ds), ("PixelSpacing", measures), ("ImagerPixelSpacing", ds)]
    for keyword, source in candidates:
        if source is None or source.get(keyword) is None:
            continue
        value = source[keyword].value
        try:
            pair = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            return None, f"{keyword} {value!r} is not numeric"
        if len(pair) != 2 or not all(math.isfinite(v) and v > 0 for v in pair):
            return None, f"{keyword} {value!r} is not two positive values: no mm measurements"
        return (pair[0], pair[1]), None
    return None, "no PixelSpacing or ImagerPixelSpacing: no mm measurements"


# --- decoding -------------------------------------------------------------------------------


def _decode(ds: Dataset) -> tuple[np.ndarray, str]:
    """All frames as stored (colour as RGB where the decoder converts it), and their
    photometric interpretation after decoding."""
    if "PixelData" not in ds:
        raise InferenceError("the dataset has no Pixel Data")
    meta = getattr(ds, "file_meta", None)
    tsyntax = UID(meta.get("TransferSyntaxUID", ImplicitVRLittleEndian) if meta is not None
                  else ImplicitVRLittleEndian)
    try:
        arr, info = get_decoder(tsyntax).as_array(ds)  # as_rgb, the default: YBR -> RGB
    except MemoryError:  # not the image's fault: may pass
        raise
    except Exception as exc:  # every decoder failure is the same thing to the caller
        raise InferenceError(f"cannot decode pixel data in transfer syntax {tsyntax.name} "
                             f"({tsyntax}): {exc}") from exc
    photometric = str(info.get("photometric_interpretation", ds.PhotometricInterpretation))
    return arr, photometric.strip().upper()


def _colour_to_gray(frame: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        # apply_color_lut scales every entry to the descriptor's bit depth.
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        rgb = apply_color_lut(frame, ds).astype(np.float64)
    else:
        bits = int(ds.BitsStored)
        rgb = frame.astype(np.float64)
        if photometric.startswith("YBR"):  # a decoder that left the colour space alone
            rgb = convert_color_space(frame, photometric, "RGB").astype(np.float64)
    gray: np.ndarray = np.clip(rgb @ LUMINANCE / (2**bits - 1), 0.0, 1.0)
    return gray.astype(np.float32)


def _gray_to_display(stored: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    has_modality = bool(ds.get("ModalityLUTSequence")) or "RescaleSlope" in ds
    # float32 (kept by the steps below: NumPy's scalars do not widen arrays) is exact for
    # stored values of up to 24 bits and ample for display; it halves the memory traffic of
    # these whole-image steps, the costliest of the decoding.
    values = (apply_modality_lut(stored, ds) if has_modality else stored).astype(np.float32)
    if ds.get("VOILUTSequence"):
        out = _voi_lut(values, ds.VOILUTSequence[0], ds)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        out = _window(values, _first(ds.WindowCenter), _first(ds.WindowWidth),
                      str(ds.get("VOILUTFunction") or "LINEAR").upper())
    elif int(ds.BitsStored) <= 8 and not has_modality:
        out = values / 255.0
    else:
        low, high = float(values.min()), float(values.max())
        out = (values - low) / (high - low) if high > low else np.zeros_like(values)
    display: np.ndarray = np.clip(out, 0.0, 1.0, out=out)  # every branch made a new array
    if photometric == "MONOCHROME1":
        np.subtract(1.0, display, out=display)
    return display.astype(np.float32, copy=False)


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2-3 with the output range [0, 1] (pydicom's apply_windowing derives its
    output range from bits stored and rescale, which we would only divide out again)."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / max(width, 1e-12)))
    if function == "LINEAR_EXACT":
        low, span = center - width / 2, max(width, 1e-12)
    else:  # LINEAR, and the default for an unknown function
        low, span = center - 0.5 - (width - 1) / 2, max(width - 1, 1e-12)
    return (values - low) / span  # clipped by the caller


def _voi_lut(values: np.ndarray, item: Dataset, ds: Dataset) -> np.ndarray:
    """A VOI LUT lookup (PS3.3 C.11.2.1.1), output scaled by the descriptor's bit depth.

    Not pydicom's apply_voi: it indexes through an array of the LUT's entry type, which wraps
    around for inputs past 255 with an 8-bit LUT."""
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    data = item.LUTData
    if isinstance(data, bytes):  # OW: 16-bit words whatever the bit depth
        meta = getattr(ds, "file_meta", None)
        big = meta is not None and meta.get("TransferSyntaxUID") == ExplicitVRBigEndian
        lut = np.frombuffer(data, dtype=">u2" if big else "<u2").astype(np.float64)
    else:
        lut = np.atleast_1d(np.asarray(data, dtype=np.float64))  # US: one value or many
    lut = lut[: entries or 2**16]
    index = np.clip(np.rint(values) - first, 0, len(lut) - 1).astype(np.int64)
    mapped: np.ndarray = lut[index] / (2**bits - 1)
    return mapped


# --- per-frame attributes -------------------------------------------------------------------


def _frame_views(ds: Dataset, count: int) -> Iterator[Dataset]:
    """For each frame, a dataset whose rescale/window are that frame's."""
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if shared is None and not per_frame:
        for _ in range(count):
            yield ds
        return
    for index in range(count):
        view = Dataset()
        for elem in ds.group_dataset(0x0028):
            view.add(elem)
        if hasattr(ds, "file_meta"):
            view.file_meta = ds.file_meta
        groups = [shared, per_frame[index] if per_frame and index < len(per_frame) else None]
        for group in groups:
            for sequence, keywords in _FRAME_GROUPS.items():
                item = _first_item(group, sequence) if group is not None else None
                for keyword in keywords:
                    if item is not None and keyword in item:
                        setattr(view, keyword, item[keyword].value)
        yield view


def _first_item(ds: Dataset | None, keyword: str) -> Dataset | None:
    seq = ds.get(keyword) if ds is not None else None
    return seq[0] if seq else None


def _first(value: float | MultiValue[float]) -> float:
    """The first of a multi-valued window attribute (alternatives, not per frame)."""
    return float(value[0] if isinstance(value, MultiValue) else value)
