"""The display pipeline against an independent numpy reading of PS3.3 C.11 on real sample files.

Each expected image is computed here from the standard's formulas with plain
numpy on pydicom's decoded stored values, never through viewer code.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from PIL import Image

from viewer import pixels
from viewer.pixels import RenderError, Viewport, Window

from .conftest import sample

# Independent reference -------------------------------------------------------------


def ref_linear(x, c, w):
    """PS3.3 C.11.2.1.2.1, output range 0..255."""
    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255
    y = np.where(x <= c - 0.5 - (w - 1) / 2, 0, y)
    y = np.where(x > c - 0.5 + (w - 1) / 2, 255, y)
    return y


def ref_linear_exact(x, c, w):
    """PS3.3 C.11.2.1.3.2."""
    y = ((x - c) / w + 0.5) * 255
    return np.where(x <= c - w / 2, 0, np.where(x > c + w / 2, 255, y))


def ref_sigmoid(x, c, w):
    """PS3.3 C.11.2.1.3.1."""
    return 255 / (1 + np.exp(-4 * (x - c) / w))


def to8(y):
    return np.clip(np.floor(np.asarray(y, dtype=float) + 0.5), 0, 255).astype(np.uint8)


def render(ds, index=0, window=None, preset=None):
    frame = pixels.decode_frame(ds, index)
    voi = pixels.choose_voi(frame, window, preset) if not frame.info.is_color else None
    return pixels.to_display(frame, voi)


def assert_close(actual, expected, tolerance=1):
    assert actual.shape == expected.shape
    diff = np.abs(actual.astype(int) - expected.astype(int))
    assert diff.max() <= tolerance, f"max difference {diff.max()} at {np.unravel_index(diff.argmax(), diff.shape)}"


# Grayscale --------------------------------------------------------------------


def test_a_signed_ct_is_rescaled_to_hu_and_windowed_with_the_files_window():
    ds = sample("693_UNCI.dcm")  # signed, 14 bits stored, rescale, window in the file
    stored = ds.pixel_array.astype(float)
    hu = stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    c, w = (
        float(ds.WindowCenter[0] if ds["WindowCenter"].VM > 1 else ds.WindowCenter),
        float(ds.WindowWidth[0] if ds["WindowWidth"].VM > 1 else ds.WindowWidth),
    )
    assert_close(render(ds), to8(ref_linear(hu, c, w)))


def test_an_unsigned_mr_uses_its_window():
    ds = sample("MR-SIEMENS-DICOM-WithOverlays.dcm")  # unsigned, 12 bits stored, no rescale
    assert ds.PixelRepresentation == 0
    x = ds.pixel_array.astype(float)
    c = float(ds.WindowCenter[0]) if ds["WindowCenter"].VM > 1 else float(ds.WindowCenter)
    w = float(ds.WindowWidth[0]) if ds["WindowWidth"].VM > 1 else float(ds.WindowWidth)
    assert_close(render(ds), to8(ref_linear(x, c, w)))


def test_monochrome1_is_shown_inverted():
    ds = sample("RG1_UNCI.dcm")  # CR, MONOCHROME1, window in the file
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    x = ds.pixel_array.astype(float)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    expected = 255 - to8(ref_linear(x, c, w)).astype(int)
    assert_close(render(ds), expected.astype(np.uint8))


@pytest.mark.parametrize(
    ("function", "reference"),
    [("LINEAR", ref_linear), ("LINEAR_EXACT", ref_linear_exact), ("SIGMOID", ref_sigmoid)],
)
def test_an_explicit_window_uses_the_requested_voi_function(function, reference):
    ds = sample("CT_small.dcm")
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    window = pixels.parse_window(f"60,350,{function.lower().replace('_', '-')}")
    assert window.function == function
    assert_close(render(ds, window=window), to8(reference(hu, 60, 350)))


def test_the_files_voi_function_is_honoured():
    ds = sample("CT_small.dcm")
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = "40", "400", "SIGMOID"
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert_close(render(ds), to8(ref_sigmoid(hu, 40, 400)))


def test_a_second_window_preset_can_be_chosen():
    ds = sample("CT_small.dcm")
    ds.WindowCenter, ds.WindowWidth = ["40", "-600"], ["400", "1500"]
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert_close(render(ds, preset=1), to8(ref_linear(hu, -600, 1500)))


def test_the_modality_lut_sequence_replaces_rescaling():
    ds = sample("mlut_18.dcm")
    item = ds.ModalityLUTSequence[0]
    entries, first, _ = (int(v) for v in item.LUTDescriptor)
    table = np.asarray(item.LUTData, dtype=float)
    stored = ds.pixel_array.astype(int)
    modality = table[np.clip(stored - first, 0, entries - 1)]
    lo, hi = modality.min(), modality.max()
    # No window in the file: the image's own range is shown from black to white.
    expected = to8(ref_linear_exact(modality, (lo + hi) / 2, hi - lo))
    assert_close(render(ds), expected)


def test_the_voi_lut_sequence_maps_values_to_the_display():
    ds = sample("vlut_04.dcm")
    item = ds.VOILUTSequence[0]
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    table = np.asarray(item.LUTData, dtype=float)
    stored = ds.pixel_array.astype(int)
    expected = to8(table[np.clip(stored - first, 0, entries - 1)] / (2**bits - 1) * 255)
    assert_close(render(ds), expected)


def test_presentation_lut_shape_inverse_inverts_a_monochrome2_image():
    ds = sample("CT_small.dcm")
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    plain = render(ds)
    ds.PresentationLUTShape = "INVERSE"
    assert_close(render(ds), (255 - plain.astype(int)).astype(np.uint8), tolerance=0)


def test_a_presentation_lut_sequence_is_applied_after_the_voi():
    ds = sample("CT_small.dcm")
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    from pydicom.dataset import Dataset

    item = Dataset()
    gamma = (np.linspace(0, 1, 256) ** 0.5 * 4095).round().astype(int)
    item.LUTDescriptor = [256, 0, 12]
    item.LUTData = [int(v) for v in gamma]
    ds.PresentationLUTSequence = [item]
    voi = np.clip(ref_linear(hu, 40, 400) / 255, 0, 1)
    expected = to8(gamma[np.rint(voi * 255).astype(int)] / 4095 * 255)
    assert_close(render(ds), expected)


def test_each_frame_of_a_multi_frame_image_is_rendered_on_its_own():
    ds = sample("emri_small.dcm")  # 10 frames, no window: each frame's own range
    everything = ds.pixel_array.astype(float)
    for index in (0, 4, 9):
        x = everything[index]
        lo, hi = x.min(), x.max()
        assert_close(render(ds, index), to8(ref_linear_exact(x, (lo + hi) / 2, hi - lo)))
    with pytest.raises(RenderError) as error:
        pixels.decode_frame(ds, 10)
    assert error.value.status == 404


def test_enhanced_multi_frame_rescale_comes_from_the_functional_groups():
    ds = sample("eCT_Supplemental.dcm")
    assert "RescaleSlope" not in ds
    info = pixels.frame_info(ds, 1)
    transform = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    assert info.intercept == float(transform.RescaleIntercept)
    x = ds.pixel_array[1].astype(float) * float(transform.RescaleSlope) + float(transform.RescaleIntercept)
    window = Window(40, 400)
    assert_close(render(ds, 1, window=window), to8(ref_linear(x, 40, 400)))


# Compressed transfer syntaxes decode to the same pixels as the uncompressed originals ---------


@pytest.mark.parametrize(
    ("compressed", "original"),
    [
        ("MR_small_RLE.dcm", "MR_small.dcm"),  # RLE Lossless
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),  # JPEG-LS Lossless
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),  # JPEG 2000 Lossless
        ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm"),
        ("693_J2KR.dcm", "693_UNCR.dcm"),  # signed CT in JPEG 2000
        ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb.dcm"),  # JPEG Lossless, Process 14 SV1 (RGB)
    ],
)
def test_lossless_compressed_images_render_exactly_like_their_originals(compressed, original):
    a, b = sample(compressed), sample(original)
    window = Window(500, 1000)
    assert_close(render(a, window=window), render(b, window=window), tolerance=0)


def test_a_lossy_jpeg_renders_close_to_its_original():
    lossy, original = sample("SC_rgb_dcmtk_+eb+cr.dcm"), sample("SC_rgb.dcm")
    diff = np.abs(render(lossy).astype(int) - render(original).astype(int))
    assert diff.mean() < 4


# Colour -------------------------------------------------------------------------


def test_rgb_is_passed_through():
    ds = sample("US1_UNCR.dcm")
    assert_close(render(ds), ds.pixel_array.astype(np.uint8), tolerance=0)


def test_16_bit_rgb_is_scaled_to_8_bits():
    ds = sample("SC_rgb_16bit.dcm")
    assert_close(render(ds), (ds.pixel_array >> 8).astype(np.uint8), tolerance=0)


def test_ybr_full_is_converted_to_rgb():
    ds = sample("SC_ybr_full_uncompressed.dcm")
    from pydicom.pixels import pixel_array

    ybr = pixel_array(ds, raw=True).astype(float)
    y, cb, cr = ybr[..., 0], ybr[..., 1] - 128, ybr[..., 2] - 128
    # PS3.3 C.7.6.3.1.2, full-range ITU-R BT.601
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    assert_close(render(ds), to8(rgb), tolerance=2)


@pytest.mark.parametrize("name", ["OBXXXX1A.dcm", "OBXXXX1A_expb.dcm", "OBXXXX1A_rle.dcm"])
def test_palette_colour_is_looked_up_in_the_files_palette(name):
    ds = sample(name)
    first = int(ds.RedPaletteColorLookupTableDescriptor[1])
    order = "<" if name != "OBXXXX1A_expb.dcm" else ">"
    tables = [
        np.frombuffer(ds[f"{c}PaletteColorLookupTableData"].value, dtype=f"{order}u2") >> 8
        for c in ("Red", "Green", "Blue")
    ]
    index = ds.pixel_array.astype(int) - first
    expected = np.stack([t[index] for t in tables], axis=-1).astype(np.uint8)
    assert_close(render(ds), expected, tolerance=0)
    assert render(ds).max() > 0


def test_multi_frame_colour_frames_differ():
    ds = sample("SC_rgb_2frame.dcm")
    assert_close(render(ds, 1), ds.pixel_array[1].astype(np.uint8), tolerance=0)


# Output ---------------------------------------------------------------------------


def test_viewport_fits_the_image_keeping_its_aspect():
    display = np.zeros((100, 200), dtype=np.uint8)
    image = pixels.to_image(display, viewport=Viewport(64, 64))
    assert image.size == (64, 32)


def test_non_square_pixels_are_shown_in_their_physical_shape():
    display = np.zeros((100, 100), dtype=np.uint8)
    assert pixels.to_image(display, aspect=2.0).size == (100, 200)


def test_a_viewport_source_region_crops_and_a_negative_width_flips():
    display = np.arange(100, dtype=np.uint8).reshape(10, 10)
    image = pixels.to_image(display, viewport=Viewport(4, 2, 2, 3, -4, 2))
    assert np.array_equal(np.asarray(image), display[3:5, 2:6][:, ::-1])


def test_jpeg_quality_changes_the_size_and_png_is_lossless():
    display = render(sample("693_UNCI.dcm"))
    image = pixels.to_image(display)
    small = pixels.encode(image, "image/jpeg", 30)
    large = pixels.encode(image, "image/jpeg", 95)
    assert len(small) < len(large)
    import io

    png = Image.open(io.BytesIO(pixels.encode(image, "image/png", 90)))
    assert np.array_equal(np.asarray(png), display)


# Bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["40", "a,b", "40,0", "40,400,cubic", "40,400,linear,1", "nan,400"])
def test_a_bad_window_is_refused_with_a_reason(text):
    with pytest.raises(RenderError) as error:
        pixels.parse_window(text)
    assert error.value.status == 400
    assert "window" in error.value.message


@pytest.mark.parametrize("text", ["", "1", "0,10", "10,10,1,1,0,5", "x,y", "9000,10"])
def test_a_bad_viewport_is_refused_with_a_reason(text):
    with pytest.raises(RenderError) as error:
        Viewport.parse(text)
    assert error.value.status == 400


def test_truncated_pixel_data_is_reported_not_crashed():
    with pytest.raises(RenderError) as error:
        pixels.decode_frame(sample("MR_truncated.dcm"))
    assert error.value.status == 422


def test_an_object_without_pixels_is_reported():
    ds = copy.deepcopy(sample("CT_small.dcm"))
    del ds.PixelData
    with pytest.raises(RenderError) as error:
        pixels.decode_frame(ds)
    assert error.value.status == 422
    del ds.Rows
    with pytest.raises(RenderError):
        pixels.decode_frame(ds)


def test_a_file_window_of_zero_width_falls_back_to_the_images_range():
    ds = sample("CT_small.dcm")
    ds.WindowCenter, ds.WindowWidth = "40", "0"
    frame = pixels.decode_frame(ds)
    assert frame.info.windows == []
    assert pixels.choose_voi(frame).window.explanation == "AUTO"


@pytest.mark.parametrize(
    "name",
    [
        "693_UNCI.dcm",
        "MR-SIEMENS-DICOM-WithOverlays.dcm",
        "emri_small.dcm",
        "vlut_04.dcm",
        "mlut_18.dcm",
        "image_dfl.dcm",
    ],
)
def test_the_native_fast_path_decodes_exactly_as_pydicom(name):
    ds = sample(name)
    frames = int(ds.get("NumberOfFrames") or 1)
    expected = ds.pixel_array.reshape(frames, ds.Rows, ds.Columns)
    for index in range(frames):
        frame = pixels.decode_frame(ds, index)
        assert frame.pixels.dtype == expected.dtype
        assert np.array_equal(frame.pixels, expected[index])
