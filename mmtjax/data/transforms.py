"""numpy transforms from decoded records to model inputs."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

IGNORE_LABEL = 255
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def decode_png(data: bytes, what: str) -> np.ndarray:
  """Decodes image bytes; a corrupt file raises ValueError naming `what`."""
  try:
    with Image.open(io.BytesIO(data)) as im:
      return np.asarray(im)
  except Exception as e:  # PIL raises several types for broken files.
    raise ValueError(f'cannot decode {what}: {e}') from e


def resize(image: np.ndarray, label: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Square resize: bilinear for the image, nearest for the label map."""
  if image.shape[:2] == (size, size) and label.shape == (size, size):
    return image, label
  im = Image.fromarray(image).resize((size, size), Image.BILINEAR)
  lb = Image.fromarray(label).resize((size, size), Image.NEAREST)
  return np.asarray(im), np.asarray(lb)


def class_mask(label: np.ndarray, class_id: int) -> np.ndarray:
  """Binary episode mask: 1 for the class, 255 kept as ignore, 0 elsewhere."""
  out = (label == class_id).astype(np.uint8)
  out[label == IGNORE_LABEL] = IGNORE_LABEL
  return out


def normalize(image: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] -> float32, ImageNet mean/std normalised."""
  return (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def hflip(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  return image[:, ::-1], label[:, ::-1]
