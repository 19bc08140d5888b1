"""Training images: the procedural "shapes" dataset (DESIGN.md section 4) and ImageNet-style folders.

**Shapes.** 1000 classes so ImageNet-style ids work unchanged: ``shape = c % 10``,
``palette = (c // 10) % 10``, ``texture = c // 100`` (`attributes`). Each image is rendered
deterministically from (class, index, seed) by `render`: one filled shape with a random centre (in the
middle half of the image), size (its circumscribed circle spans 30-60% of the side) and rotation, in
its palette's foreground colour, textured, on its palette's flat background. Geometry is drawn in
units of the image side, so one (class, index, seed) renders the same picture at every size.
Textures repeat every `TEXTURE_PERIOD` of the side (6.4 px at 128 px): low frequencies (shape,
colour) belong to scale 0, textures to the residual scale. The tables below are also in docs/DATA.md.

**Folders.** `ImageFolder` reads the ImageNet train layout (one sub-folder per class, sorted folder
names -> class ids); images are resized and centre-cropped (ADM's recipe); unreadable files are
skipped and counted, never a crash.

Both give `PairDataset` items: the image at the full resolution and the same image resized to the
base resolution (the two inputs of Algorithm 1), uint8 CHW, plus the label.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from msf_train.errors import MsfError

NUM_CLASSES = 1000

SHAPES = ("circle", "square", "triangle", "pentagon", "hexagon", "star", "cross", "ring", "crescent", "ellipse")

# (name, foreground RGB, background RGB): hues and lightness spread so that every background differs
# from every other by a wide margin and each foreground stands out on its own background.
PALETTES = (
    ("red on navy", (225, 45, 45), (20, 30, 85)),
    ("yellow on purple", (245, 215, 50), (75, 25, 105)),
    ("green on charcoal", (60, 190, 75), (35, 35, 35)),
    ("blue on cream", (40, 85, 215), (240, 230, 200)),
    ("orange on teal", (250, 145, 35), (0, 105, 115)),
    ("white on crimson", (245, 245, 245), (155, 20, 35)),
    ("magenta on lime", (205, 40, 170), (175, 225, 85)),
    ("cyan on brown", (70, 215, 235), (105, 65, 30)),
    ("black on gold", (20, 20, 20), (235, 185, 40)),
    ("forest on pink", (20, 95, 45), (250, 175, 200)),
)

TEXTURES = ("flat", "stripes-h", "stripes-v", "stripes-d", "stripes-a", "checker", "dots", "grid", "waves", "grain")

TEXTURE_PERIOD = 1 / 20  # of the image side
TEXTURE_STRENGTH = 0.45  # how far a texture pulls the foreground toward white (dark colours) or black
SUPERSAMPLE = 2  # shape edges are antialiased by rendering the mask at 2x and averaging

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff", ".gif")


def attributes(class_id: int) -> tuple[int, int, int]:
    """class id -> (shape, palette, texture) indices into SHAPES, PALETTES, TEXTURES."""
    c = int(class_id)
    if not 0 <= c < NUM_CLASSES:
        raise MsfError(f"shapes class id {c} is outside 0..{NUM_CLASSES - 1}")
    return c % 10, (c // 10) % 10, c // 100


def class_name(class_id: int) -> str:
    s, p, t = attributes(class_id)
    return f"{TEXTURES[t]} {SHAPES[s]}, {PALETTES[p][0]}"


# ---- shape masks: u, v are coordinates in the shape's frame, its circumscribed circle is radius 1 ---
def _halfplanes(u, v, n: int, offset: float, dist: float) -> list[np.ndarray]:
    """n half-planes u cos(a_k) + v sin(a_k) <= dist with normals at a_k = offset + 2 pi k / n."""
    return [u * math.cos(a) + v * math.sin(a) <= dist for a in offset + 2 * math.pi * np.arange(n) / n]


def _mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    name = SHAPES[shape]
    if name == "circle":
        return u * u + v * v <= 1
    if name == "ellipse":
        return u * u + 4 * v * v <= 1
    if name == "ring":
        r2 = u * u + v * v
        return (r2 <= 1) & (r2 >= 0.55 ** 2)
    if name == "crescent":
        return (u * u + v * v <= 1) & ((u - 0.5) ** 2 + v * v > 0.8 ** 2)
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.95) & (av <= 0.3)) | ((au <= 0.3) & (av <= 0.95))
    sides = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}
    if name in sides:  # regular polygon, vertex at angle 0: edge normals halfway between vertices
        n = sides[name]
        return np.logical_and.reduce(_halfplanes(u, v, n, math.pi / n, math.cos(math.pi / n)))
    if name == "star":  # pentagram: inside >= 4 of the 5 lines through non-adjacent vertices
        inside = _halfplanes(u, v, 5, 2 * math.pi / 5, math.cos(2 * math.pi / 5))
        return np.sum(np.stack(inside), axis=0, dtype=np.uint8) >= 4
    raise AssertionError(name)


def _texture(texture: int, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """Texture intensity in [0, 1] at image coordinates x, y (units of the side); None for flat.

    Always draws the same random numbers (phase, grain seed) so that every texture of an image shares
    the same geometry draws."""
    phase_x, phase_y = rng.random(2)
    grain_seed = int(rng.integers(2**31))
    name = TEXTURES[texture]
    f = 1 / TEXTURE_PERIOD
    tau = 2 * np.pi

    def band(s):  # a smooth square wave: crisp stripes without hard aliasing
        return np.clip(0.5 + 1.5 * np.sin(tau * s), 0.0, 1.0)

    if name == "flat":
        return None
    if name == "stripes-h":
        return band(f * y + phase_y)
    if name == "stripes-v":
        return band(f * x + phase_x)
    if name == "stripes-d":
        return band(f * (x + y) / math.sqrt(2) + phase_x)
    if name == "stripes-a":
        return band(f * (x - y) / math.sqrt(2) + phase_x)
    if name == "checker":
        return np.clip(0.5 + 2.0 * np.sin(tau * (f * x + phase_x)) * np.sin(tau * (f * y + phase_y)), 0.0, 1.0)
    fx = (f * x + phase_x) % 1.0 - 0.5  # position inside the texture cell, in [-0.5, 0.5)
    fy = (f * y + phase_y) % 1.0 - 0.5
    if name == "dots":
        return np.clip((0.3 - np.sqrt(fx * fx + fy * fy)) * 8 + 0.5, 0.0, 1.0)
    if name == "grid":
        return np.clip((np.maximum(np.abs(fx), np.abs(fy)) - 0.32) * 8 + 0.5, 0.0, 1.0)
    if name == "waves":
        return band(f * y + 0.6 * np.sin(tau * 4 * x) + phase_y)
    if name == "grain":  # random cells half a period wide, sampled nearest: the same at every size
        cells = int(round(2 * f))
        noise = np.random.default_rng(grain_seed).random((cells, cells))
        cell = lambda c: np.minimum((c * cells).astype(np.int64), cells - 1)  # noqa: E731
        return noise[cell(y), cell(x)]
    raise AssertionError(name)


def render(class_id: int, index: int, seed: int = 0, size: int = 128) -> np.ndarray:
    """Image `index` of shapes class `class_id` under `seed`, uint8 (size, size, 3). Deterministic."""
    shape, palette, texture = attributes(class_id)
    rng = np.random.default_rng([int(seed), int(class_id), int(index)])
    cx, cy = rng.uniform(0.25, 0.75, 2)  # centre in the middle half
    radius = rng.uniform(0.30, 0.60) / 2  # circumscribed diameter 30-60% of the side
    theta = rng.uniform(0, 2 * np.pi)

    # Everything happens inside the shape's bounding box (it lies inside its circumscribed circle);
    # the rest of the image is the flat background.
    lo = lambda c: max(0, int(math.floor((c - 1.05 * radius) * size)))  # noqa: E731
    hi = lambda c: min(size, int(math.ceil((c + 1.05 * radius) * size)))  # noqa: E731
    x0, x1, y0, y1 = lo(cx), hi(cx), lo(cy), hi(cy)

    # Coverage, antialiased: the mask at SUPERSAMPLE x resolution, averaged down.
    ss = SUPERSAMPLE
    gx = ((np.arange(x0 * ss, x1 * ss, dtype=np.float32) + 0.5) / (size * ss) - cx) / radius
    gy = ((np.arange(y0 * ss, y1 * ss, dtype=np.float32) + 0.5) / (size * ss) - cy) / radius
    c, s = math.cos(theta), math.sin(theta)
    u = c * gx[None, :] + s * gy[:, None]  # rotated by -theta into the shape's frame
    v = -s * gx[None, :] + c * gy[:, None]
    m = _mask(shape, u, v).view(np.uint8)
    cover = sum(m[i::ss, j::ss] for i in range(ss) for j in range(ss)) * np.float32(1 / (ss * ss))

    _, fg, bg = PALETTES[palette]
    fg = np.asarray(fg, np.float32)
    bg = np.asarray(bg, np.float32)
    px = (np.arange(x0, x1, dtype=np.float32) + 0.5) / size  # pixel centres, units of the side
    py = (np.arange(y0, y1, dtype=np.float32) + 0.5) / size
    tex = _texture(texture, px[None, :], py[:, None], rng)
    if tex is None:
        fore = fg
    else:
        light = 0.299 * fg[0] + 0.587 * fg[1] + 0.114 * fg[2]
        toward = np.full(3, 0.0 if light >= 128 else 255.0, np.float32)
        fore = fg + (TEXTURE_STRENGTH * tex).astype(np.float32)[..., None] * (toward - fg)
    img = np.empty((size, size, 3), np.uint8)
    img[:] = np.asarray(PALETTES[palette][2], np.uint8)
    img[y0:y1, x0:x1] = np.rint(bg + cover[..., None] * (fore - bg))
    return img


# ---- datasets ------------------------------------------------------------------------------------
def parse_classes(spec: str | int | None, num_classes: int = NUM_CLASSES) -> list[int]:
    """'20' -> classes 0..19; '3,5,10-12' -> [3, 5, 10, 11, 12]; None -> all."""
    if spec is None:
        return list(range(num_classes))
    spec = str(spec).strip()
    try:
        if spec.isdigit():
            n = int(spec)
            if not 1 <= n <= num_classes:
                raise MsfError(f"--classes {n}: the shapes dataset has {num_classes} classes")
            return list(range(n))
        out = []
        for part in spec.split(","):
            a, _, b = part.strip().partition("-")
            out.extend(range(int(a), int(b or a) + 1))
    except ValueError:
        raise MsfError(f"--classes {spec!r}: give a count (e.g. 20) or ids and ranges (e.g. 0,5,10-19)") from None
    bad = [c for c in out if not 0 <= c < num_classes]
    if bad:
        raise MsfError(f"--classes: class id {bad[0]} is outside 0..{num_classes - 1}")
    return sorted(set(out))


def resize_uint8(img: np.ndarray, size: int) -> np.ndarray:
    """HWC uint8 -> (size, size) HWC uint8, bicubic with PIL's antialiasing when shrinking."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    return np.array(Image.fromarray(img).resize((size, size), Image.BICUBIC))


def center_crop_resize(pil: Image.Image, size: int) -> np.ndarray:
    """ADM's recipe: halve with a box filter while the short side >= 2*size, bicubic to a short side of
    `size`, centre crop. -> (size, size, 3) uint8."""
    while min(pil.size) >= 2 * size:
        pil = pil.resize(tuple(x // 2 for x in pil.size), resample=Image.BOX)
    scale = size / min(pil.size)
    pil = pil.resize(tuple(max(size, round(x * scale)) for x in pil.size), resample=Image.BICUBIC)
    arr = np.asarray(pil)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top:top + size, left:left + size]


class PairDataset:
    """Items: (full uint8 (3, S, S), base uint8 (3, s, s), label, ok). `ok` is False for an unreadable
    image (the arrays are zeros then); consumers drop such rows and count them. Map-style, so it
    works with a torch DataLoader and its workers."""

    labels: list[int]

    def __init__(self, full_size: int, base_size: int):
        self.full_size, self.base_size = int(full_size), int(base_size)

    def image(self, i: int) -> np.ndarray | None:  # (S, S, 3) uint8 at full size, or None
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = self.image(i)
        if img is None:
            return (torch.zeros(3, self.full_size, self.full_size, dtype=torch.uint8),
                    torch.zeros(3, self.base_size, self.base_size, dtype=torch.uint8), self.labels[i], False)
        base = resize_uint8(img, self.base_size)
        chw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))  # noqa: E731
        return chw(img), chw(base), self.labels[i], True


class ShapesDataset(PairDataset):
    """`per_class` images of each class in `classes`, ordered class-major; item i is image
    i % per_class of class classes[i // per_class]."""

    def __init__(self, classes: list[int], per_class: int, seed: int = 0, full_size: int = 128,
                 base_size: int | None = None):
        super().__init__(full_size, base_size or full_size)
        if per_class < 1:
            raise MsfError(f"--per-class must be >= 1, got {per_class}")
        for c in classes:
            attributes(c)
        self.classes, self.per_class, self.seed = list(classes), int(per_class), int(seed)
        self.labels = [c for c in self.classes for _ in range(self.per_class)]

    def image(self, i: int) -> np.ndarray:
        return render(self.labels[i], i % self.per_class, self.seed, self.full_size)

    def describe(self) -> dict:
        return {"kind": "shapes", "classes": self.classes, "per_class": self.per_class, "seed": self.seed}


class ImageFolder(PairDataset):
    """The ImageNet train layout: root/<class folder>/<images>; sorted folder names -> ids 0, 1, ..."""

    def __init__(self, root, full_size: int, base_size: int | None = None):
        super().__init__(full_size, base_size or full_size)
        root = Path(root)
        if not root.is_dir():
            raise MsfError(f"data folder not found: {root}")
        self.root = root
        self.class_names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        self.files: list[Path] = []
        self.labels = []
        for label, name in enumerate(self.class_names):
            for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for fn in sorted(filenames):
                    if fn.lower().endswith(IMAGE_EXTENSIONS) and not fn.startswith("."):
                        self.files.append(Path(dirpath) / fn)
                        self.labels.append(label)
        if not self.files:
            what = "no class sub-folders" if not self.class_names else "no image files in its class sub-folders"
            raise MsfError(f"data folder {root} has {what}: expected the ImageNet train layout, "
                           f"one sub-folder of images per class")

    def image(self, i: int) -> np.ndarray | None:
        try:
            with Image.open(self.files[i]) as im:
                im.load()
                pil = im.convert("RGB")
            return center_crop_resize(pil, self.full_size)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, MemoryError):
            return None  # unreadable or truncated: skipped and counted by the consumer

    def describe(self) -> dict:
        return {"kind": "folder", "root": str(self.root.resolve()), "class_names": self.class_names,
                "files": len(self.files)}


class ShapesStream(torch.utils.data.IterableDataset):
    """An endless stream of random shapes batches for VAE training: (uint8 (B, 3, C, C), labels (B,)),
    images rendered at `size` and randomly cropped to `crop` (default: no crop). Crops train a
    convolutional VAE on the same pixel statistics for a fraction of the compute.

    Each DataLoader worker draws from its own seed, so workers never repeat each other."""

    def __init__(self, classes: list[int], size: int, seed: int = 0, batch: int = 1, crop: int | None = None):
        self.classes, self.size, self.seed, self.batch = list(classes), int(size), int(seed), int(batch)
        self.crop = int(crop or size)
        if not 8 <= self.crop <= self.size:
            raise MsfError(f"--crop {crop} must be between 8 and the image size {size}")

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        rng = np.random.default_rng([self.seed, worker, 0x5A9E])
        c, room = self.crop, self.size - self.crop + 1
        while True:
            cls = rng.choice(self.classes, self.batch)
            idx = rng.integers(0, 2**31, self.batch)
            off = rng.integers(0, room, (self.batch, 2))
            imgs = np.stack([render(int(k), int(i), self.seed, self.size)[y:y + c, x:x + c]
                             for k, i, (y, x) in zip(cls, idx, off)])
            yield torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(cls.astype(np.int64))


def to_unit(images_uint8):
    """uint8 (B, 3, H, W) torch tensor -> float32 in [-1, 1]."""
    return images_uint8.float().div_(127.5).sub_(1.0)
