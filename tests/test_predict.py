"""Predicting digits from image files and test-set indices (mnist_lit.predict, mnist_lit.inference.preprocess)."""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np
import pytest
import torch
from conftest import compose, run_cli
from PIL import Image, ImageDraw, ImageFilter

from mnist_lit.errors import UserError

# --- images of digits as people make them ------------------------------------------------------------------


def _arc(cx, cy, rx, ry, a0, a1, n=40):
    return [
        (cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a)))
        for a in np.linspace(a0, a1, n)
    ]


# pen strokes of each digit in a unit box (x right, y down), written the way a person writes them
STROKES = {
    0: [_arc(0.5, 0.5, 0.3, 0.45, 0, 360)],
    1: [[(0.35, 0.2), (0.55, 0.05), (0.55, 0.95)]],
    2: [_arc(0.5, 0.3, 0.3, 0.25, 200, 360) + [(0.8, 0.35), (0.2, 0.95), (0.85, 0.95)]],
    3: [_arc(0.5, 0.27, 0.28, 0.22, 200, 450), _arc(0.5, 0.72, 0.32, 0.25, -90, 160)],
    4: [[(0.6, 0.95), (0.6, 0.05), (0.15, 0.65), (0.85, 0.65)]],
    5: [[(0.8, 0.05), (0.3, 0.05), (0.25, 0.45)] + _arc(0.5, 0.65, 0.32, 0.3, -130, 150)],
    6: [[(0.7, 0.05), (0.35, 0.4)] + _arc(0.5, 0.7, 0.3, 0.27, 200, 560)],
    7: [[(0.15, 0.05), (0.85, 0.05), (0.4, 0.95)]],
    8: [_arc(0.5, 0.27, 0.25, 0.22, 0, 360), _arc(0.5, 0.72, 0.3, 0.25, 0, 360)],
    9: [_arc(0.5, 0.3, 0.28, 0.25, 0, 360), [(0.78, 0.3), (0.7, 0.95)]],
}


def drawing(digit, size=(600, 450), box=(150, 50, 300, 340), width=12, ink=(0, 0, 0), paper=(255, 255, 255)):
    """The digit drawn with a round pen of `width` pixels, as in an image editor."""
    image = Image.new("RGB", size, paper)
    draw = ImageDraw.Draw(image)
    x0, y0, w, h = box
    for stroke in STROKES[digit]:
        points = [(x0 + px * w, y0 + py * h) for px, py in stroke]
        draw.line(points, fill=ink, width=width, joint="curve")
        for x, y in (points[0], points[-1]):
            draw.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill=ink)
    return image


def photo(digit, seed):
    """A phone photo of the digit written in blue ink on paper: tilted, unevenly lit (a shadow across half
    of them), the table showing at the left edge, noisy, slightly out of focus, JPEG-compressed."""
    rng = np.random.default_rng(seed)
    w, h = 1200, 900
    box = (450 + int(rng.integers(-150, 150)), 180 + int(rng.integers(-80, 80)), 290, 500)
    image = drawing(digit, (w, h), box, width=int(rng.integers(10, 24)), ink=(30, 40, 110))
    image = image.rotate(float(rng.uniform(-8, 8)), resample=Image.BICUBIC, fillcolor=(255, 255, 255))
    a = np.asarray(image, dtype=np.float32) / 255
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    light = 0.62 + 0.3 * xx - 0.15 * yy + rng.uniform(-0.05, 0.05)
    if seed % 2:  # the phone's shadow across the paper, its edge sharp
        light = light * np.where(xx + 0.3 * yy > 0.7, 0.6, 1.0)
    a = a * np.array([0.95, 0.93, 0.85]) * light[..., None]
    a[:, : int(w * 0.06)] = 0.18 + 0.05 * yy[:, : int(w * 0.06), None]
    a += rng.normal(0, 0.025, a.shape)
    return Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(2))


def inverted_large_off_centre(digit: torch.Tensor, rng) -> Image.Image:
    """An MNIST digit as a 280x280 picture: 7x larger, dark on white, shifted away from the centre."""
    big = Image.fromarray(255 - digit.numpy()).resize((196, 196), Image.Resampling.BILINEAR)
    canvas = Image.new("L", (280, 280), 255)
    canvas.paste(big, tuple(int(v) for v in rng.integers(0, 85, 2)))
    return canvas


def centre_of_mass(digit: torch.Tensor) -> tuple[float, float]:
    d = digit.float()
    rows, cols = torch.arange(d.shape[0]).float(), torch.arange(d.shape[1]).float()
    return float((d.sum(1) * rows).sum() / d.sum()), float((d.sum(0) * cols).sum() / d.sum())


# --- preprocessing: what MNIST did, on any picture ---------------------------------------------------------


def test_preprocess_makes_an_mnist_digit():
    from mnist_lit.inference.preprocess import to_mnist

    digit = to_mnist(drawing(7, size=(500, 700), box=(40, 300, 200, 380)))  # tall canvas, digit low left
    assert digit.shape == (28, 28) and digit.dtype == torch.uint8
    assert digit.max() == 255 and digit.min() == 0
    rows, cols = torch.nonzero(digit > 30, as_tuple=True)
    height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
    assert max(height, width) in (19, 20, 21) and width < height  # fits 20x20, keeps the aspect ratio
    cy, cx = centre_of_mass(digit)
    assert abs(cy - 14) <= 0.6 and abs(cx - 14) <= 0.6  # MNIST's centring
    assert (digit[:3] == 0).all() and (digit[:, :3] == 0).all()  # nothing but the digit


def test_preprocess_does_not_care_about_polarity_colour_alpha_bit_depth_or_orientation(tmp_path):
    from mnist_lit.inference.preprocess import load_digit, to_mnist

    reference = to_mnist(drawing(4)).float()

    def close(image) -> bool:
        return (to_mnist(image).float() - reference).abs().mean() < 8  # of 255

    assert close(drawing(4, ink=(255, 255, 255), paper=(0, 0, 0)))  # light on dark
    assert close(drawing(4, ink=(200, 30, 30), paper=(250, 250, 200)))  # red pen, yellowish paper
    strokes = drawing(4, ink=(0, 0, 0), paper=(255, 255, 255)).convert("L")
    transparent = Image.new("RGBA", strokes.size, (0, 0, 0, 0))  # black strokes on a transparent canvas
    transparent.putalpha(Image.eval(strokes, lambda v: 255 - v))
    assert close(transparent)
    assert close(Image.fromarray(np.asarray(strokes).astype(np.uint16) * 257))  # 16-bit grayscale
    # a photo taken sideways: the pixels are rotated, the EXIF orientation tag says how to show it
    sideways = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    drawing(4).rotate(90, expand=True).save(sideways, exif=exif, quality=95)
    assert (load_digit(sideways).float() - reference).abs().mean() < 8


@pytest.mark.real_data
def test_large_inverted_off_centre_test_digits_predict_as_the_originals(real_run, real_root, tmp_path):
    from mnist_lit.data import load_mnist
    from mnist_lit.inference.preprocess import load_digit
    from mnist_lit.predict import classify
    from mnist_lit.runs.checkpoint import load_run

    run = load_run(real_run)
    images, labels = load_mnist(real_root, train=False)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(100):
        paths.append(tmp_path / f"digit{i}.png")
        inverted_large_off_centre(images[i], rng).save(paths[-1])
    original = [top[0][0] for top in classify(run.net, images[:100], run.datamodule, 1)]
    from_files = [
        top[0][0] for top in classify(run.net, torch.stack([load_digit(p) for p in paths]), run.datamodule, 1)
    ]
    same = sum(a == b for a, b in zip(original, from_files, strict=True))
    assert same >= 95, f"only {same}/100 large inverted off-centre digits predicted as their originals"


@pytest.mark.real_data
def test_drawn_and_photographed_digits_are_recognised(real_run, tmp_path):
    from mnist_lit.inference.preprocess import load_digit
    from mnist_lit.predict import classify
    from mnist_lit.runs.checkpoint import load_run

    run = load_run(real_run)
    styles = {
        "drawn": lambda d: drawing(d, width=(6, 12, 25)[d % 3]),  # thin, medium and bold pens
        "chalk": lambda d: drawing(
            d, size=(240, 340), box=(20, 20, 200, 300), width=10, ink=(255, 255, 255), paper=(0, 0, 0)
        ),
        "photo": lambda d: photo(d, seed=d),
    }
    for style, make in styles.items():
        paths = []
        for d in range(10):
            paths.append(tmp_path / f"{style}_{d}.{'jpg' if style == 'photo' else 'png'}")
            make(d).save(paths[-1])
        predicted = [
            top[0][0]
            for top in classify(run.net, torch.stack([load_digit(p) for p in paths]), run.datamodule, 1)
        ]
        correct = sum(p == d for d, p in enumerate(predicted))
        assert correct >= 9, f"{style}: predicted {predicted} for 0-9"


# --- the command line ---------------------------------------------------------------------------------------


@pytest.mark.real_data
def test_index_2_is_a_1_as_in_the_tutorial(real_run, real_root, capsys):
    from mnist_lit.predict import predict

    results = predict(compose("predict", f"run_dir={real_run}", "index=[2,0]", f"data.root={real_root}"))
    assert [(r.input, r.digit, r.label) for r in results] == [("test[2]", 1, 1), ("test[0]", 7, 7)]
    top = results[0].top
    assert len(top) == 3 and top[0][0] == 1 and top[0][1] > 0.9
    assert top[0][1] >= top[1][1] >= top[2][1] and sum(p for _, p in top) <= 1 + 1e-6
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("test[2]: 1") and f"1: {top[0][1]:6.2%}" in out


def test_predict_json_on_a_folder_and_the_synthetic_run(synthetic_run, synthetic_root, tmp_path, capsys):
    from mnist_lit.data import load_mnist
    from mnist_lit.predict import predict

    images, labels = load_mnist(synthetic_root, train=False)
    folder = tmp_path / "digits"
    folder.mkdir()
    for i in range(10):
        Image.fromarray(images[i].numpy()).resize((140, 140)).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not a digit")  # a folder's other files are not inputs
    cfg = compose(
        "predict",
        f"run_dir={synthetic_run}",
        f"images={folder}",
        "index=[0,1,2,3,4,5,6,7,8,9]",
        "output=json",
        "top_k=2",
        f"preview={tmp_path / 'seen.png'}",
    )
    predict(cfg)
    out = json.loads(capsys.readouterr().out)
    names = [str(folder / f"{i}.png") for i in range(10)] + [f"test[{i}]" for i in range(10)]
    assert [r["input"] for r in out] == names
    assert all(len(r["top"]) == 2 and "error" not in r and 0 <= r["digit"] <= 9 for r in out)
    assert all(
        r["top"][0]["digit"] == r["digit"] and r["top"][0]["probability"] >= r["top"][1]["probability"]
        for r in out
    )
    # the run's own network (32-16 hidden units, standardised pixels) on its own test set
    assert [r["label"] for r in out[10:]] == labels[:10].tolist()
    assert sum(r["digit"] == r["label"] for r in out[10:]) >= 9
    with Image.open(tmp_path / "seen.png") as preview:
        assert preview.format == "PNG" and preview.width > 500


def bomb_png(path, width: int, height: int) -> None:
    """A tiny PNG file whose header declares width x height pixels (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_bad_inputs_fail_one_by_one_and_the_others_are_predicted(synthetic_run, tmp_path):
    good = tmp_path / "good.png"
    drawing(1).save(good)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty.png").write_bytes(b"")
    Image.new("RGB", (300, 200), (250, 250, 250)).save(tmp_path / "blank.png")
    (tmp_path / "fake.jpg").write_text("not a jpeg")
    Image.new("L", (64, 64)).save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:60])
    (tmp_path / "no_images").mkdir()
    bomb_png(tmp_path / "bomb.png", 100_000, 100_000)
    names = [
        "good.png",
        "notes.txt",
        "empty.png",
        "blank.png",
        "fake.jpg",
        "cut.png",
        "missing.png",
        "no_images",
        "bomb.png",
    ]
    listed = ",".join(str(tmp_path / n) for n in names)
    proc = run_cli("mnist_lit.predict", f"run_dir={synthetic_run}", f"images=[{listed}]", "index=[0,99999]")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert re.match(rf"{re.escape(str(good))}:\s+\d   top: \d: ", proc.stdout), proc.stdout
    assert re.search(r"test\[0\]:\s+\d   top: ", proc.stdout)
    for name, message in [
        ("notes.txt", "not an image file"),
        ("empty.png", "the file is empty (0 bytes)"),
        ("blank.png", "no digit found: the image is blank"),
        ("fake.jpg", "not an image file"),
        ("cut.png", "the image is truncated or corrupt"),
        ("missing.png", "no such file"),
        ("no_images", "a folder without image files"),
        ("bomb.png", "the image declares more pixels than mnist-lit decodes"),
    ]:
        assert re.search(rf"{re.escape(str(tmp_path / name))}:\s+error: {re.escape(message)}", proc.stderr), (
            name
        )
    assert re.search(r"test\[99999\]:\s+error: no such test digit: index must be 0-199\.", proc.stderr)
    assert "9 of 11 inputs failed" in proc.stderr

    if os.geteuid() != 0:  # root reads any file
        (tmp_path / "locked.png").write_bytes(good.read_bytes())
        (tmp_path / "locked.png").chmod(0)
        from mnist_lit.inference.preprocess import load_digit

        with pytest.raises(UserError, match="permission denied"):
            load_digit(tmp_path / "locked.png")


def test_predict_config_mistakes(synthetic_run):
    from mnist_lit.predict import predict

    with pytest.raises(UserError, match="nothing to predict"):
        predict(compose("predict", f"run_dir={synthetic_run}"))
    with pytest.raises(UserError, match="output=xml is not known"):
        predict(compose("predict", f"run_dir={synthetic_run}", "index=1", "output=xml"))
    with pytest.raises(UserError, match="is not a test-set index"):
        predict(compose("predict", f"run_dir={synthetic_run}", "index=two"))


def test_what_this_user_may_not_read_is_named_not_a_traceback(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from mnist_lit.config.messages import report_user_errors
    from mnist_lit.predict import expand_images

    def load(path):  # as a checkpoint of another user's, mode 600, opened by torch.load
        raise PermissionError(13, "Permission denied", path)

    with pytest.raises(SystemExit) as exit_info:
        report_user_errors(load)(str(tmp_path / "last.ckpt"))
    assert exit_info.value.code == 1
    said = f"error: {tmp_path / 'last.ckpt'}: permission denied (Permission denied). Give this user access"
    assert capsys.readouterr().err == said + " to it, or use another path.\n"
    # a folder of images that cannot be listed is one failed input; the others are still predicted
    locked, good = tmp_path / "locked", tmp_path / "good.png"
    locked.mkdir()
    good.write_bytes(b"")
    listing = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: load(self) if self == locked else listing(self))
    assert expand_images([locked, good]) == [locked, good]
