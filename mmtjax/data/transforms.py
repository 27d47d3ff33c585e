"""numpy/PIL transforms from decoded records to model inputs.

Images are uint8 [H, W, 3]; labels are uint8 [H, W] episode masks in
{0, 1, 255} (255 = ignore). Every geometric transform resizes labels with
nearest neighbour and fills new label pixels with 255, so masks stay binary
with the ignore label preserved. Random transforms take a numpy Generator, so
an episode's augmentation is a function of its seed.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from mmtjax.errors import UserError
from mmtjax.labels import IGNORE_LABEL

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
MEAN_PIXEL = tuple(int(round(255 * m)) for m in IMAGENET_MEAN)  # PFENet pads crops with it.


def encode_png(array: np.ndarray) -> bytes:
  """PNG bytes of a uint8 image [H, W(, C)] (how builders store images and label maps)."""
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format='PNG')
  return buf.getvalue()


def decode_image(data: bytes, what: str) -> np.ndarray:
  """Decodes PNG/JPEG/BMP bytes; a corrupt file raises ValueError naming `what`."""
  try:
    with Image.open(io.BytesIO(data)) as im:
      im.load()
      return np.asarray(im)
  except Exception as e:  # PIL raises several types for broken files.
    if isinstance(e, Image.UnidentifiedImageError):  # its message names a BytesIO, not the file
      e = 'not an image file PIL can read' + (' (empty file)' if not data else '')
    raise UserError(f'cannot decode {what}: {e}') from None


def to_rgb(image: np.ndarray) -> np.ndarray:
  """Grey or RGBA -> RGB uint8."""
  if image.ndim == 2:
    return np.repeat(image[..., None], 3, axis=-1)
  return image[..., :3]


def class_mask(label: np.ndarray, class_id: int) -> np.ndarray:
  """Binary episode mask: 1 for the class, 255 kept as ignore, 0 elsewhere."""
  out = (label == class_id).astype(np.uint8)
  out[label == IGNORE_LABEL] = IGNORE_LABEL
  return out


def _resize_pair(image, label, hw):
  h, w = hw
  im = Image.fromarray(image).resize((w, h), Image.BILINEAR)
  lb = Image.fromarray(label).resize((w, h), Image.NEAREST)
  return np.asarray(im), np.asarray(lb)


def resize_label(label: np.ndarray, size: int) -> np.ndarray:
  """A label map alone, resized square as `resize` resizes it (nearest)."""
  return np.asarray(Image.fromarray(label).resize((size, size), Image.NEAREST))


def resize(image: np.ndarray, label: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Square resize (HSNet/PATNet protocol): bilinear image, nearest label."""
  if image.shape[:2] == (size, size) and label.shape == (size, size):
    return image, label
  return _resize_pair(image, label, (size, size))


def resize_longer_side(image: np.ndarray, label: np.ndarray, size: int
                       ) -> tuple[np.ndarray, np.ndarray]:
  """Scales so that the longer side is `size`, keeping the aspect ratio (PFENet test)."""
  h, w = label.shape
  scale = size / max(h, w)
  return _resize_pair(image, label, (max(1, round(h * scale)), max(1, round(w * scale))))


def pad_to(image: np.ndarray, label: np.ndarray, size: int, image_fill=(0, 0, 0)
           ) -> tuple[np.ndarray, np.ndarray]:
  """Pads bottom/right to size x size: image with `image_fill`, label with 255 (PFENet test)."""
  h, w = label.shape
  if h > size or w > size:
    raise ValueError(f'pad_to: {h}x{w} is larger than {size}x{size}')
  im = np.empty((size, size, 3), np.uint8)
  im[:] = np.asarray(image_fill, np.uint8)
  im[:h, :w] = image
  lb = np.full((size, size), IGNORE_LABEL, np.uint8)
  lb[:h, :w] = label
  return im, lb


def hflip(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  return image[:, ::-1], label[:, ::-1]


def random_scale(image, label, rng: np.random.Generator, low: float = 0.9, high: float = 1.1):
  """Isotropic rescale by a factor uniform in [low, high] (PFENet RandScale)."""
  s = rng.uniform(low, high)
  h, w = label.shape
  return _resize_pair(image, label, (max(1, round(h * s)), max(1, round(w * s))))


def random_rotate(image, label, rng: np.random.Generator, max_degrees: float = 10.0,
                  p: float = 0.5):
  """With probability p, rotates about the centre by an angle uniform in +-max_degrees;
  new image pixels take the mean colour, new label pixels 255 (PFENet RandRotate)."""
  if rng.random() >= p:
    return image, label
  angle = rng.uniform(-max_degrees, max_degrees)
  im = Image.fromarray(image).rotate(angle, Image.BILINEAR, fillcolor=MEAN_PIXEL)
  lb = Image.fromarray(label).rotate(angle, Image.NEAREST, fillcolor=IGNORE_LABEL)
  return np.asarray(im), np.asarray(lb)


# OpenCV's fixed kernels for sigma <= 0 and sizes up to 7 (getGaussianKernel).
_CV_SMALL_KERNELS = {1: [1.0], 3: [0.25, 0.5, 0.25], 5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
                     7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125]}


def gaussian_kernel(size: int = 5) -> np.ndarray:
  """OpenCV's 1-D kernel for sigma = 0: the binomial table up to size 7, otherwise a
  Gaussian of sigma = 0.3 ((size - 1) / 2 - 1) + 0.8."""
  if size in _CV_SMALL_KERNELS:
    return np.asarray(_CV_SMALL_KERNELS[size])
  sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
  x = np.arange(size) - (size - 1) / 2
  k = np.exp(-x ** 2 / (2 * sigma ** 2))
  return k / k.sum()


def gaussian_blur(image: np.ndarray, rng: np.random.Generator, size: int = 5, p: float = 0.5):
  """With probability p, a separable size x size Gaussian blur, reflect-101 borders
  (cv2.GaussianBlur(image, (5, 5), 0), PFENet RandomGaussianBlur)."""
  if rng.random() >= p:
    return image
  k = gaussian_kernel(size)
  r = size // 2
  x = np.pad(image.astype(np.float32), ((r, r), (r, r), (0, 0)), mode='reflect')
  x = sum(k[i] * x[i:i + image.shape[0]] for i in range(size))
  x = sum(k[i] * x[:, i:i + image.shape[1]] for i in range(size))
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def random_crop(image, label, rng: np.random.Generator, size: int, *, keep: float = 0.85,
                tries: int = 30):
  """size x size crop, padding first (centred) with the mean colour / 255 when smaller.

  As PFENet's Crop: when the crop keeps less than `keep` of the foreground
  pixels it is redrawn, up to `tries` times; then the whole padded image is
  resized to the crop size instead.
  """
  h, w = label.shape
  ph, pw = max(size - h, 0), max(size - w, 0)
  if ph or pw:
    im = np.empty((h + ph, w + pw, 3), np.uint8)
    im[:] = np.asarray(MEAN_PIXEL, np.uint8)
    im[ph // 2:ph // 2 + h, pw // 2:pw // 2 + w] = image
    lb = np.full((h + ph, w + pw), IGNORE_LABEL, np.uint8)
    lb[ph // 2:ph // 2 + h, pw // 2:pw // 2 + w] = label
    image, label = im, lb
  h, w = label.shape
  total = np.sum(label == 1)
  for _ in range(tries + 1):
    y, x = rng.integers(h - size + 1), rng.integers(w - size + 1)
    lb = label[y:y + size, x:x + size]
    if total == 0 or np.sum(lb == 1) >= keep * total:
      return image[y:y + size, x:x + size], lb
  return resize(image, label, size)


def augment_mmnet(image, label, rng: np.random.Generator, size: int):
  """MM-Net / PFENet training augmentation: scale 0.9-1.1, rotate +-10 (p .5),
  Gaussian blur k5 (p .5), horizontal flip (p .5), crop `size` (pad mean / 255)."""
  image, label = random_scale(image, label, rng)
  image, label = random_rotate(image, label, rng)
  image = gaussian_blur(image, rng)
  if rng.random() < 0.5:
    image, label = hflip(image, label)
  return random_crop(image, label, rng, size)


def normalize(image: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] -> float32, ImageNet mean/std normalised."""
  return (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
