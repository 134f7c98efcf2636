"""umsrep_core.imaging.pixels: the display chain, colour to gray, frames, codecs, spacing."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_windowing, convert_color_space
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from umsrep_core.errors import InferenceError
from umsrep_core.imaging.pixels import LUMINANCE, pixel_spacing, read_frames

RNG = np.random.default_rng(7)


def make_ds(arr: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
            signed: bool = False) -> Dataset:
    """A minimal in-memory image dataset holding `arr` natively ((frames,) rows, cols(, 3))."""
    colour = photometric in ("RGB", "YBR_FULL")
    frames = arr.shape[0] if arr.ndim == (4 if colour else 3) else 1
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.Rows, ds.Columns = arr.shape[-3:-1] if colour else arr.shape[-2:]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(signed)
    if colour:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    return ds


def gray12(rows: int = 40, cols: int = 30) -> np.ndarray:
    return RNG.integers(0, 4096, (rows, cols), dtype=np.uint16)


def test_window_after_rescale_matches_the_standard_and_pydicom() -> None:
    arr = gray12()
    ds = make_ds(arr, bits_stored=12)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
    ds.WindowCenter, ds.WindowWidth = 3000, 4001
    [frame] = read_frames(ds)
    assert frame.dtype == np.float32 and frame.shape == arr.shape
    values = arr * 2.0 - 1000
    expected = np.clip((values - (3000 - 0.5)) / 4000 + 0.5, 0, 1)
    np.testing.assert_allclose(frame, expected, atol=1e-6)
    # pydicom's apply_windowing gives the same ramp on its own output range
    plain = make_ds(arr, bits_stored=12)
    plain.WindowCenter, plain.WindowWidth = 2048, 1024
    reference = apply_windowing(arr.astype(np.float64), plain) / 4095
    np.testing.assert_allclose(read_frames(plain)[0], reference, atol=1e-6)


def test_monochrome1_is_inverted() -> None:
    arr = gray12()
    mono2, mono1 = make_ds(arr, bits_stored=12), make_ds(arr, "MONOCHROME1", bits_stored=12)
    for ds in (mono1, mono2):
        ds.WindowCenter, ds.WindowWidth = [1500, 99], [2000, 99]  # alternatives: the first wins
    np.testing.assert_allclose(read_frames(mono1)[0], 1 - read_frames(mono2)[0], atol=1e-6)
    bright_stored = np.unravel_index(arr.argmax(), arr.shape)
    assert read_frames(mono1)[0][bright_stored] == 0.0  # high stored value: dark in MONOCHROME1


@pytest.mark.parametrize(("function", "expected"), [
    ("LINEAR_EXACT", lambda v: np.clip((v - 950) / 100, 0, 1)),
    ("SIGMOID", lambda v: 1 / (1 + np.exp(-4 * (v - 1000) / 100))),
])
def test_voi_lut_functions(function: str, expected: Callable[[np.ndarray], np.ndarray]) -> None:
    arr = RNG.integers(800, 1200, (20, 20), dtype=np.uint16)
    ds = make_ds(arr, bits_stored=12)
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 1000, 100, function
    np.testing.assert_allclose(read_frames(ds)[0], expected(arr.astype(float)), atol=1e-6)


def test_no_window_stretches_min_max_but_8_bit_is_display_ready() -> None:
    arr = RNG.integers(1000, 3000, (32, 32), dtype=np.uint16)
    [frame] = read_frames(make_ds(arr, bits_stored=12))
    assert frame.min() == 0.0 and frame.max() == 1.0
    np.testing.assert_allclose(frame, (arr - arr.min()) / (arr.max() - arr.min()), atol=1e-6)
    flat = make_ds(np.full((8, 8), 700, np.uint16), bits_stored=12)
    assert not read_frames(flat)[0].any()  # a constant frame: no division by zero
    small = RNG.integers(10, 200, (16, 16), dtype=np.uint8)
    np.testing.assert_allclose(read_frames(make_ds(small))[0], small / 255, atol=1e-6)


def test_signed_pixels_with_rescale() -> None:
    arr = RNG.integers(-1024, 2000, (16, 16), dtype=np.int16)
    ds = make_ds(arr, bits_stored=16, signed=True)
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 40, 400
    expected = np.clip((arr - 1024.0 - 39.5) / 399 + 0.5, 0, 1)
    np.testing.assert_allclose(read_frames(ds)[0], expected, atol=1e-6)


def _lut_item(lut: np.ndarray, first: int, bits: int, as_bytes: bool) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(lut), first, bits]
    if as_bytes:
        item.add_new("LUTData", "OW", lut.astype("<u2").tobytes())
    else:
        item.add_new("LUTData", "US", [int(v) for v in lut])
    return item


@pytest.mark.parametrize("as_bytes", [False, True])
def test_voi_lut_sequence_8_bit_lut_on_12_bit_input(as_bytes: bool) -> None:
    # A 4096-entry LUT with 8-bit output: inputs past 255 must not wrap around.
    arr = RNG.integers(0, 4096, (24, 24), dtype=np.uint16)
    arr[0, 0], arr[0, 1] = 10, 4095
    lut = np.round(255 * (np.arange(3996) / 3995) ** 0.5).astype(np.uint16)
    ds = make_ds(arr, bits_stored=12)
    ds.VOILUTSequence = [_lut_item(lut, 100, 8, as_bytes)]
    ds.WindowCenter, ds.WindowWidth = 5, 1  # the LUT takes precedence
    [frame] = read_frames(ds)
    expected = lut[np.clip(arr.astype(int) - 100, 0, len(lut) - 1)] / 255
    np.testing.assert_allclose(frame, expected, atol=1e-6)
    assert frame[0, 0] == 0.0 and frame[0, 1] == 1.0


def test_modality_lut_sequence() -> None:
    arr = RNG.integers(0, 256, (16, 16), dtype=np.uint8)
    lut = (60000 - np.arange(256) * 200).astype(np.uint16)  # a decreasing mapping
    ds = make_ds(arr)
    ds.ModalityLUTSequence = [_lut_item(lut, 0, 16, as_bytes=False)]
    ds.ModalityLUTSequence[0].ModalityLUTType = "OD"
    [frame] = read_frames(ds)
    mapped = lut[arr].astype(float)
    np.testing.assert_allclose(frame, (mapped - mapped.min()) / np.ptp(mapped), atol=1e-6)


def rgb_image(rows: int = 24, cols: int = 32) -> np.ndarray:
    """Smooth colours, constant over horizontal pixel pairs (so 4:2:2 loses nothing)."""
    y, x = np.mgrid[0:rows, 0:cols // 2]
    rgb = np.stack([40 + 6 * x, 200 - 5 * y, 30 + 4 * (x + y)], axis=-1)
    return np.repeat(rgb, 2, axis=1).astype(np.uint8)


def luminance(rgb: np.ndarray) -> np.ndarray:
    return (rgb.astype(float) @ LUMINANCE) / 255


def test_rgb_to_luminance() -> None:
    rgb = rgb_image()
    np.testing.assert_allclose(read_frames(make_ds(rgb, "RGB"))[0], luminance(rgb), atol=1e-6)


def test_ybr_full_and_422_native() -> None:
    rgb = rgb_image()
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    np.testing.assert_allclose(read_frames(make_ds(ybr, "YBR_FULL"))[0], luminance(rgb),
                               atol=2 / 255)
    # YBR_FULL_422 native: per pair of pixels Y1 Y2 Cb Cr
    pairs = ybr.reshape(ybr.shape[0], -1, 2, 3)
    packed = np.stack([pairs[..., 0, 0], pairs[..., 1, 0], pairs[..., 0, 1], pairs[..., 0, 2]],
                      axis=-1).astype(np.uint8)
    ds = make_ds(ybr, "YBR_FULL")
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PixelData = packed.tobytes()
    np.testing.assert_allclose(read_frames(ds)[0], luminance(rgb), atol=2 / 255)


def test_jpeg_baseline_ybr_422_from_a_real_encoder() -> None:
    rgb = rgb_image(48, 64)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95, subsampling=1)  # 4:2:2
    ds = make_ds(rgb, "RGB")
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buf.getvalue()])
    [frame] = read_frames(ds)
    assert np.abs(frame - luminance(rgb)).max() < 0.03


def test_palette_colour() -> None:
    index = RNG.integers(0, 256, (16, 16), dtype=np.uint8)
    ramp = np.arange(256)
    red, green, blue = ramp * 257, (255 - ramp) * 257, np.full(256, 128 * 257)
    ds = make_ds(index, "PALETTE COLOR")
    for colour, lut in zip(("Red", "Green", "Blue"), (red, green, blue), strict=True):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        ds.add_new(f"{colour}PaletteColorLookupTableData", "OW",
                   lut.astype("<u2").tobytes())
    expected = np.stack([red, green, blue], -1)[index] @ LUMINANCE / 65535
    np.testing.assert_allclose(read_frames(ds)[0], expected, atol=1e-6)


def test_multi_frame_and_per_frame_windows() -> None:
    arr = np.stack([np.full((8, 10), v, np.uint16) for v in (100, 200, 300)])
    arr[:, 0, 0] = 0
    ds = make_ds(arr, bits_stored=12)
    frames = read_frames(ds)
    assert len(frames) == 3 and all(f.shape == (8, 10) for f in frames)
    assert all(f[1, 1] == 1.0 for f in frames)  # min-max per frame
    # Enhanced: the shared group rescales, each frame has its own window
    shared, per_frame = Dataset(), []
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, 0, "US"
    shared.PixelValueTransformationSequence = [transform]
    for center in (100, 200, 1000):
        group, voi = Dataset(), Dataset()
        voi.WindowCenter, voi.WindowWidth = center, 101
        group.FrameVOILUTSequence = [voi]
        per_frame.append(group)
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = per_frame
    values = [f[1, 1] for f in read_frames(ds)]
    assert values == pytest.approx([0.505, 0.505, 0.0])  # LINEAR: (v - c + 0.5) / (w - 1) + .5


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_lossless_codecs_decode_to_the_native_result(syntax: str, tmp_path: Path) -> None:
    arr = np.stack([gray12(64, 48), gray12(64, 48)])  # JPEG 2000 wants >= 32 px for 6 levels
    ds = make_ds(arr, "MONOCHROME1", bits_stored=12)
    native = read_frames(ds)
    ds.compress(syntax)
    path = tmp_path / "compressed.dcm"
    ds.save_as(path, enforce_file_format=True)
    decoded = read_frames(dcmread(path))
    for a, b in zip(native, decoded, strict=True):
        np.testing.assert_array_equal(a, b)


def test_undecodable_pixels_name_the_transfer_syntax() -> None:
    ds = make_ds(gray12(), bits_stored=12)
    ds.file_meta.TransferSyntaxUID = JPEG2000
    ds.PixelData = encapsulate([b"\x00not a codestream" * 4])
    with pytest.raises(InferenceError, match="JPEG 2000"):
        read_frames(ds)
    del ds.PixelData
    with pytest.raises(InferenceError, match="no Pixel Data"):
        read_frames(ds)


def test_pixel_spacing() -> None:
    ds = Dataset()
    assert pixel_spacing(ds) == (None, "no PixelSpacing or ImagerPixelSpacing: no mm measurements")
    ds.ImagerPixelSpacing = [0.15, 0.16]
    assert pixel_spacing(ds) == ((0.15, 0.16), None)
    ds.PixelSpacing = [0.1, 0.2]  # the patient plane wins
    assert pixel_spacing(ds) == ((0.1, 0.2), None)
    ds.PixelSpacing = [0, 0]
    spacing, reason = pixel_spacing(ds)
    assert spacing is None and reason is not None and "PixelSpacing" in reason
    enhanced, shared, measures = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing = [0.5, 0.5]
    shared.PixelMeasuresSequence = [measures]
    enhanced.SharedFunctionalGroupsSequence = [shared]
    assert pixel_spacing(enhanced) == ((0.5, 0.5), None)
