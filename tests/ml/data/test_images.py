import io

import numpy as np
import pytest
from PIL import Image

from ml.data.images import ImageError, check_image, read_image, read_mask
from ml.data.palette import VOC_PALETTE, save_mask_png
from tests.ml.data.builders import png_header_only, write_image


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "WEBP"])
def test_whitelisted_formats_are_accepted(tmp_path, fmt):
    path = write_image(tmp_path / f"a.{fmt.lower()}", size=(31, 17), fmt=fmt)
    assert check_image(path) == (31, 17)
    assert read_image(path).shape == (17, 31, 3)


def test_format_is_decided_by_content_not_name(tmp_path):
    png_named_jpg = write_image(tmp_path / "a.jpg", fmt="PNG")
    assert check_image(png_named_jpg) == (24, 16)
    gif_named_png = tmp_path / "b.png"
    Image.new("P", (8, 8)).save(gif_named_png, format="GIF")
    with pytest.raises(ImageError, match="not a JPEG, PNG, BMP or WEBP file"):
        check_image(gif_named_png)


def test_non_image_refused(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("these are not pixels\n")
    with pytest.raises(ImageError, match="not a JPEG, PNG, BMP or WEBP file"):
        check_image(path)


def test_truncated_jpeg_refused(tmp_path):
    whole = write_image(tmp_path / "whole.jpg", size=(64, 48)).read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt"):
        check_image(cut)
    with pytest.raises(ImageError, match="truncated or corrupt"):
        read_image(cut)


def test_corrupt_png_data_refused(tmp_path):
    data = bytearray(write_image(tmp_path / "a.png", fmt="PNG").read_bytes())
    idat = data.index(b"IDAT")
    data[idat + 8 : idat + 40] = b"\xff" * 32  # clobber compressed pixel data
    bad = tmp_path / "bad.png"
    bad.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="truncated or corrupt|damaged"):
        check_image(bad)


def test_huge_pixel_count_refused_from_header(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(20000, 20000))
    with pytest.raises(ImageError, match="too many pixels|megapixels"):
        check_image(path)


def test_pixel_limit_is_ours_below_pillows_guard(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png_header_only(8000, 8000))  # 64 MP: under Pillow's guard, over our 50 MP default
    with pytest.raises(ImageError, match=r"8000x8000 = 64\.0 megapixels, above the limit of 50 megapixels"):
        check_image(path)


def test_pixel_limit_is_a_parameter(tmp_path):
    path = write_image(tmp_path / "a.png", size=(20, 10), fmt="PNG")
    assert check_image(path, max_pixels=200) == (20, 10)
    with pytest.raises(ImageError, match="above the limit"):
        check_image(path, max_pixels=199)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_animated_refused(tmp_path, fmt):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "blue")]
    path = tmp_path / f"anim.{fmt.lower()}"
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:])
    with pytest.raises(ImageError, match="2 frames"):
        check_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        check_image(tmp_path / "nope.jpg")


def test_read_image_is_rgb_not_bgr(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (4, 3), (255, 0, 0)).save(path)
    pixels = read_image(path)
    assert pixels.dtype == np.uint8 and pixels.shape == (3, 4, 3)
    assert (pixels[..., 0] == 255).all() and (pixels[..., 1:] == 0).all()


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [("L", 77, (77, 77, 77)), ("RGBA", (10, 20, 30, 0), (10, 20, 30)), ("CMYK", (0, 0, 0, 0), (255, 255, 255))],
)
def test_read_image_converts_modes(tmp_path, mode, value, expected):
    path = tmp_path / ("a.jpg" if mode == "CMYK" else "a.png")  # PNG cannot hold CMYK
    Image.new(mode, (5, 4), value).save(path)
    pixels = read_image(path)
    assert pixels.shape == (4, 5, 3)
    assert np.abs(pixels.astype(int) - expected).max() <= 1


def test_read_image_scales_16_bit(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((3, 3), 40000, np.uint16)).save(path)
    assert (read_image(path) == 40000 >> 8).all()


def test_exif_orientation_ignored_pixels_as_stored(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    Image.new("RGB", (30, 10), "white").save(path, exif=exif.tobytes())
    assert check_image(path) == (30, 10)
    assert read_image(path).shape == (10, 30, 3)


def test_mask_round_trip_palette_and_grey(tmp_path):
    mask = np.array([[0, 1, 2], [255, 20, 0]], dtype=np.uint8)
    save_mask_png(mask, tmp_path / "p.png")
    Image.fromarray(mask).save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), mask)
    np.testing.assert_array_equal(read_mask(tmp_path / "l.png"), mask)


def test_mask_from_voc_colours(tmp_path):
    mask = np.array([[0, 3], [255, 15]], dtype=np.uint8)
    Image.fromarray(VOC_PALETTE[mask]).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png"), mask)
    Image.new("RGB", (2, 2), (1, 2, 3)).save(tmp_path / "odd.png")
    with pytest.raises(ImageError, match=r"outside the label colours: \(1,2,3\)"):
        read_mask(tmp_path / "odd.png")


def test_mask_from_custom_label_colours(tmp_path):
    palette = np.array([(0, 0, 0), (1, 2, 3), (250, 50, 50)], dtype=np.uint8)
    mask = np.array([[0, 1], [2, 2]], dtype=np.uint8)
    Image.fromarray(palette[mask]).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png", palette=palette), mask)


def test_mask_must_be_png(tmp_path):
    buffer = io.BytesIO()
    Image.new("L", (4, 4)).save(buffer, format="JPEG")
    (tmp_path / "m.png").write_bytes(buffer.getvalue())
    with pytest.raises(ImageError, match="not a PNG file"):
        read_mask(tmp_path / "m.png")
