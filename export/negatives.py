"""Images that are not chest radiographs: the negatives the input-domain check is fitted on, and a separate
set of kinds it is measured on and never fitted to.

Nothing is downloaded: every image is rendered here (OpenCV for the fitted kinds, matplotlib, a different
renderer with different fonts, for the held-out documents and charts) or taken from the images that
scikit-image ships inside its wheel (`skimage.data`, the ones that load without `pooch`). The two families
share no source image and no generator:

- FIT_KINDS (training the view model, and choosing its thresholds on the validation part of the real
  films): OpenCV text pages (Hershey fonts), OpenCV line and bar charts, filled shapes, uniform and
  Gaussian noise, linear gradients, stripes and checkerboards, flat fields, the `FIT_PHOTOS` below, and
  chest films cut into shuffled tiles.
- HELD_OUT_KINDS (only `cxr evaluate-domain`): the `HELD_OUT_PHOTOS`, the 25x25 faces of `lfw_subset`
  enlarged, matplotlib documents (DejaVu fonts) and charts (scatter, pie, histogram, heat map), fractal
  (1/f) noise, salt-and-pepper noise, radial and sinusoidal gradients, colour-mapped chest films, and images
  too small to be a radiograph.

Every function returns `uint8` images: 2-D grayscale, or (H, W, 3) BGR for the colour kinds, encoded to
PNG or JPEG by the measuring command so the bytes take the service's own decode path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import cv2
import numpy as np

FIT_PHOTOS = (
    "astronaut",
    "camera",
    "coffee",
    "chelsea",
    "brick",
    "grass",
    "coins",
    "moon",
    "page",
    "text",
    "checkerboard",
    "hubble_deep_field",
    "immunohistochemistry",
    "colorwheel",
    "horse",
)
HELD_OUT_PHOTOS = (
    "cat",
    "clock",
    "cell",
    "gravel",
    "logo",
    "microaneurysms",
    "retina",
    "rocket",
    "shepp_logan_phantom",
)


def skimage_image(name: str) -> np.ndarray:
    """A `skimage.data` image as uint8 gray or BGR (only images bundled in the wheel: no download)."""
    from skimage import data

    image = np.asarray(getattr(data, name)())
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        image = np.clip(image * 255.0 if image.max() <= 1.0 else image, 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim == 3:
        image = np.ascontiguousarray(image[:, :, ::-1])  # RGB -> BGR, as OpenCV decodes
    return image


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image


def random_view(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """A random crop (40-100 % of the shorter side), flip and rotation of an image, resized to size x size."""
    height, width = image.shape[:2]
    side = int(min(height, width) * rng.uniform(0.4, 1.0))
    y = int(rng.integers(0, height - side + 1))
    x = int(rng.integers(0, width - side + 1))
    crop = image[y : y + side, x : x + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = np.rot90(crop, int(rng.integers(0, 4)))
    return cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=cv2.INTER_AREA)


# ---- kinds used to fit ------------------------------------------------------------------------------


def _cv_text_page(rng: np.random.Generator, size: int) -> np.ndarray:
    paper = int(rng.integers(180, 256))
    ink = int(rng.integers(0, 90))
    page = np.full((size, size), paper, np.uint8)
    fonts = [
        cv2.FONT_HERSHEY_SIMPLEX,
        cv2.FONT_HERSHEY_PLAIN,
        cv2.FONT_HERSHEY_DUPLEX,
        cv2.FONT_HERSHEY_COMPLEX,
    ]
    scale = rng.uniform(0.3, 1.2) * size / 256
    y = int(rng.integers(10, 30))
    letters = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,:-"
    while y < size:
        line = "".join(rng.choice(list(letters), int(rng.integers(10, 60))))
        cv2.putText(
            page, line, (int(rng.integers(2, 20)), y), int(rng.choice(fonts)), scale, ink, 1, cv2.LINE_AA
        )
        y += int(max(6, 28 * scale)) + int(rng.integers(0, 8))
    if rng.random() < 0.5:
        page = 255 - page
    return page


def _cv_chart(rng: np.random.Generator, size: int) -> np.ndarray:
    chart = np.full((size, size), int(rng.integers(200, 256)), np.uint8)
    ink = int(rng.integers(0, 80))
    margin = size // 8
    cv2.line(chart, (margin, size - margin), (size - margin // 2, size - margin), ink, 1)
    cv2.line(chart, (margin, size - margin), (margin, margin // 2), ink, 1)
    count = int(rng.integers(3, 12))
    values = rng.uniform(0.1, 1.0, count)
    xs = np.linspace(margin + 4, size - margin, count).astype(int)
    ys = (size - margin - values * (size - 2 * margin)).astype(int)
    if rng.random() < 0.5:
        width = max(2, (size - 2 * margin) // (count * 2))
        for x, y in zip(xs, ys, strict=True):
            cv2.rectangle(
                chart,
                (int(x) - width // 2, int(y)),
                (int(x) + width // 2, size - margin),
                int(rng.integers(0, 160)),
                -1,
            )
    else:
        points = np.stack([xs, ys], axis=1).reshape(-1, 1, 2).astype(np.int32)
        cv2.polylines(chart, [points], False, ink, int(rng.integers(1, 3)), cv2.LINE_AA)
    return chart


def _shapes(rng: np.random.Generator, size: int) -> np.ndarray:
    canvas = np.full((size, size), int(rng.integers(0, 256)), np.uint8)
    for _ in range(int(rng.integers(1, 12))):
        colour = int(rng.integers(0, 256))
        kind = rng.integers(0, 3)
        centre = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        if kind == 0:
            cv2.circle(
                canvas, centre, int(rng.integers(4, size // 2)), colour, -1 if rng.random() < 0.7 else 2
            )
        elif kind == 1:
            other = (int(rng.integers(0, size)), int(rng.integers(0, size)))
            cv2.rectangle(canvas, centre, other, colour, -1 if rng.random() < 0.7 else 2)
        else:
            points = rng.integers(0, size, (int(rng.integers(3, 7)), 2)).astype(np.int32)
            cv2.fillPoly(canvas, [points], colour)
    return canvas


def _noise(rng: np.random.Generator, size: int) -> np.ndarray:
    image: np.ndarray
    if rng.random() < 0.5:
        image = rng.integers(0, 256, (size, size)).astype(np.float64)
    else:
        image = rng.normal(rng.uniform(60, 200), rng.uniform(10, 80), (size, size))
    blur = int(rng.choice([0, 0, 3, 5]))
    image = np.clip(image, 0, 255).astype(np.uint8)
    return cv2.GaussianBlur(image, (blur, blur), 0) if blur else image


def _linear_gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / size
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    low, high = sorted(rng.uniform(0, 255, 2))
    return np.asarray(low + ramp * (high - low)).astype(np.uint8)


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    period = int(rng.integers(4, size // 2))
    yy, xx = np.mgrid[0:size, 0:size]
    if rng.random() < 0.5:
        pattern = ((xx // period + yy // period) % 2).astype(np.uint8)
    else:
        pattern = ((xx // period) % 2).astype(np.uint8)
    low, high = sorted(rng.integers(0, 256, 2))
    return np.asarray(np.where(pattern, high, low), dtype=np.uint8)


def _flat(rng: np.random.Generator, size: int) -> np.ndarray:
    return np.clip(rng.normal(rng.uniform(0, 255), rng.uniform(0, 3), (size, size)), 0, 255).astype(np.uint8)


def _fit_photo(rng: np.random.Generator, size: int) -> np.ndarray:
    return _gray(random_view(skimage_image(str(rng.choice(FIT_PHOTOS))), rng, size))


def shuffled_tiles(film: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """A chest film cut into a grid of tiles put back in random places: radiograph texture, no anatomy."""
    grid = int(rng.integers(3, 6))
    image = cv2.resize(film, (size, size), interpolation=cv2.INTER_AREA)
    step = size // grid
    tiles = [
        image[r * step : (r + 1) * step, c * step : (c + 1) * step] for r in range(grid) for c in range(grid)
    ]
    order = rng.permutation(len(tiles))
    rows = [
        np.hstack([np.rot90(tiles[order[r * grid + c]], int(rng.integers(0, 4))) for c in range(grid)])
        for r in range(grid)
    ]
    return cv2.resize(np.vstack(rows), (size, size), interpolation=cv2.INTER_AREA)


FIT_KINDS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "text page (OpenCV)": _cv_text_page,
    "chart (OpenCV)": _cv_chart,
    "shapes": _shapes,
    "noise (uniform, Gaussian)": _noise,
    "linear gradient": _linear_gradient,
    "stripes, checkerboard": _stripes,
    "flat field": _flat,
    "photo (skimage, fit set)": _fit_photo,
}
"""Rendered kinds for fitting; chest films in shuffled tiles are added by the trainer (they need films)."""


# ---- held-out kinds: never used to fit ---------------------------------------------------------------


def _figure_to_array(figure: object) -> np.ndarray:
    import matplotlib.pyplot as plt

    canvas = figure.canvas  # type: ignore[attr-defined]
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    plt.close(figure)  # type: ignore[arg-type]
    return cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGR)


def _mpl_document(rng: np.random.Generator, size: int) -> np.ndarray:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(size / 100, size * rng.uniform(1.0, 1.4) / 100), dpi=100)
    words = [
        "patient",
        "request",
        "radiology",
        "chest",
        "history",
        "signature",
        "date",
        "ward",
        "report",
        "findings",
        "the",
        "of",
        "and",
        "to",
        "with",
        "no",
        "acute",
        "please",
        "clinical",
        "form",
    ]
    y = 0.95
    family = str(rng.choice(["DejaVu Sans", "DejaVu Serif", "DejaVu Sans Mono"]))
    while y > 0.03:
        line = " ".join(rng.choice(words, int(rng.integers(3, 10))))
        figure.text(
            0.05,
            y,
            line,
            fontsize=float(rng.uniform(5, 12)),
            family=family,
            weight=str(rng.choice(["normal", "bold"])),
        )
        y -= rng.uniform(0.03, 0.08)
    return _figure_to_array(figure)


def _mpl_chart(rng: np.random.Generator, size: int) -> np.ndarray:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(size / 100, size / 100), dpi=100)
    kind = int(rng.integers(0, 4))
    if kind == 0:
        axis.scatter(rng.normal(size=60), rng.normal(size=60), s=8)
    elif kind == 1:
        axis.pie(rng.uniform(1, 5, int(rng.integers(3, 7))))
    elif kind == 2:
        axis.hist(rng.normal(size=300), bins=int(rng.integers(8, 30)))
    else:
        axis.imshow(rng.normal(size=(8, 8)), cmap=str(rng.choice(["viridis", "gray", "hot"])))
    axis.set_title("figure", fontsize=8)
    return _figure_to_array(figure)


def _fractal_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    spectrum = np.fft.fft2(rng.normal(size=(size, size)))
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    radius = np.sqrt(fx**2 + fy**2)
    radius[0, 0] = 1.0
    field = np.real(np.fft.ifft2(spectrum / radius ** rng.uniform(0.8, 1.6)))
    field = (field - field.min()) / max(float(np.ptp(field)), 1e-9)
    return np.asarray(field * 255, dtype=np.uint8)


def _salt_pepper(rng: np.random.Generator, size: int) -> np.ndarray:
    image = np.full((size, size), int(rng.integers(0, 256)), np.uint8)
    dots = rng.random((size, size))
    density = rng.uniform(0.05, 0.4)
    image[dots < density / 2] = 0
    image[dots > 1 - density / 2] = 255
    return image


def _curved_gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    if rng.random() < 0.5:
        cy, cx = rng.uniform(0, 1, 2)
        field = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    else:
        field = np.sin(2 * np.pi * rng.uniform(0.5, 3) * xx) * np.cos(2 * np.pi * rng.uniform(0.5, 3) * yy)
    field = (field - field.min()) / max(float(np.ptp(field)), 1e-9)
    return np.asarray(field * 255, dtype=np.uint8)


def _faces(rng: np.random.Generator, size: int) -> np.ndarray:
    from skimage import data

    faces = np.asarray(data.lfw_subset())  # type: ignore[no-untyped-call]
    face = faces[int(rng.integers(0, len(faces)))]
    return np.asarray(cv2.resize((face * 255).astype(np.uint8), (size, size), interpolation=cv2.INTER_CUBIC))


def _held_out_photo(rng: np.random.Generator, size: int) -> np.ndarray:
    return random_view(skimage_image(str(rng.choice(HELD_OUT_PHOTOS))), rng, size)


def _tiny(rng: np.random.Generator, size: int) -> np.ndarray:
    side = int(rng.choice([1, 2, 8, 16, 32, 48]))
    return rng.integers(0, 256, (side, side)).astype(np.uint8)


def colour_mapped(film: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A chest film recoloured: an OpenCV colour map, or its channels scaled differently (a tint)."""
    if rng.random() < 0.5:
        maps = [
            cv2.COLORMAP_JET,
            cv2.COLORMAP_HOT,
            cv2.COLORMAP_VIRIDIS,
            cv2.COLORMAP_OCEAN,
            cv2.COLORMAP_PINK,
        ]
        return cv2.applyColorMap(film, int(rng.choice(maps)))
    gains = rng.uniform(0.2, 1.0, 3)
    gains[int(rng.integers(0, 3))] = 1.0
    return np.clip(film[:, :, None] * gains[None, None, :], 0, 255).astype(np.uint8)


HELD_OUT_KINDS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "photo (skimage, held-out images)": _held_out_photo,
    "portrait (skimage lfw faces)": _faces,
    "document (matplotlib)": _mpl_document,
    "chart (matplotlib)": _mpl_chart,
    "fractal noise": _fractal_noise,
    "salt-and-pepper noise": _salt_pepper,
    "radial or sinusoidal gradient": _curved_gradient,
    "too small": _tiny,
}
"""Held-out kinds that need no film; colour-mapped chest films are added by the measuring command."""


def generate(
    kinds: dict[str, Callable[[np.random.Generator, int], np.ndarray]],
    per_kind: int,
    seed: int,
    size: int = 512,
) -> Iterator[tuple[str, np.ndarray]]:
    """(kind, image) pairs, `per_kind` of each, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    for kind, make in kinds.items():
        for _ in range(per_kind):
            yield kind, make(rng, size)
