"""Data set sources on local files the tests write (no network)."""

from __future__ import annotations

import gc
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from kdlightning.data.datasets import FASHION_MNIST_DIR, Digits, FashionMNIST, HFDataset, read_idx


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def make_fashion_dir(root: Path, n_train: int = 30, n_test: int = 10, compress: bool = True) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for name, array in arrays.items():
        write_idx(root / name, array, compress)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    write_idx(tmp_path / "x-idx3-ubyte", array, compress)
    name = "x-idx3-ubyte.gz" if compress else "x-idx3-ubyte"
    np.testing.assert_array_equal(read_idx(tmp_path / name), array)


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x05abc")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 10) + b"abc")
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_reads_idx_files(tmp_path: Path, compress: bool) -> None:
    arrays = make_fashion_dir(tmp_path, compress=compress)
    data = FashionMNIST(root=str(tmp_path)).load()
    assert data.train_inputs.shape == (30, 1, 28, 28)
    assert data.train_inputs.dtype == np.float32
    np.testing.assert_allclose(data.train_inputs[:, 0] * 255, arrays["train-images-idx3-ubyte"], atol=1e-3)
    np.testing.assert_array_equal(data.test_labels, arrays["t10k-labels-idx1-ubyte"])
    assert data.num_classes == 10
    assert data.class_names[9] == "Ankle boot"


def test_copies_of_a_source_share_the_arrays_one_of_them_loaded(tmp_path: Path, monkeypatch) -> None:
    """An unpickled source (a federation's client in a Ray worker, per message) does not load the data again."""
    for name, n_train in (("a", 30), ("b", 40)):
        (tmp_path / name).mkdir()
        make_fashion_dir(tmp_path / name, n_train=n_train)
    loads = []
    load = FashionMNIST.load

    def counting(self):
        loads.append(self.root.name)
        return load(self)

    monkeypatch.setattr(FashionMNIST, "load", counting)
    source = FashionMNIST(root=str(tmp_path / "a"))
    data = source.data()
    copy = pickle.loads(pickle.dumps(source))
    assert copy.data() is data and loads == ["a"]
    other = FashionMNIST(root=str(tmp_path / "b")).data()  # another configuration loads its own
    assert len(other.train_labels) == 40 and loads == ["a", "b"]
    del source, copy, data
    gc.collect()  # no source holds the arrays any more: they are freed, and a new source loads again
    assert len(FashionMNIST(root=str(tmp_path / "a")).data().train_labels) == 30 and loads == ["a", "b", "a"]


def test_fashion_mnist_missing_directory_says_how_to_install(tmp_path: Path) -> None:
    source = FashionMNIST(root=str(tmp_path / "nowhere"))  # constructing reads nothing
    with pytest.raises(FileNotFoundError, match=r"nowhere.*apt-get install dataset-fashion-mnist"):
        source.load()


def test_fashion_mnist_directory_from_environment(tmp_path: Path, monkeypatch) -> None:
    make_fashion_dir(tmp_path)
    monkeypatch.setenv("KDL_FASHION_MNIST_DIR", str(tmp_path))
    assert FashionMNIST().load().train_labels.shape == (30,)


@pytest.mark.skipif(
    not Path(FASHION_MNIST_DIR, "train-labels-idx1-ubyte.gz").exists(),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_from_the_debian_package() -> None:
    data = FashionMNIST().load()
    assert data.train_inputs.shape == (60000, 1, 28, 28)
    assert data.test_inputs.shape == (10000, 1, 28, 28)
    assert np.bincount(data.train_labels).tolist() == [6000] * 10
    assert 0.25 < data.train_inputs.mean() < 0.32  # Fashion-MNIST's known mean intensity, about 0.286


def test_digits_split_is_stratified_and_seeded() -> None:
    a, b, c = Digits(seed=0).load(), Digits(seed=0).load(), Digits(seed=1).load()
    assert len(a.train_labels) + len(a.test_labels) == 1797
    np.testing.assert_array_equal(a.test_labels, b.test_labels)
    assert not np.array_equal(a.test_labels, c.test_labels)
    shares = np.bincount(a.test_labels) / len(a.test_labels)
    assert shares.min() > 0.08 and shares.max() < 0.12


def test_csv_numeric_columns_with_string_labels(tmp_path: Path) -> None:
    rows = ["f1,f2,label"] + [f"{i},{i * 2},{'cat' if i % 2 else 'dog'}" for i in range(20)]
    (tmp_path / "train.csv").write_text("\n".join(rows))
    (tmp_path / "test.csv").write_text("\n".join(rows[:6]))
    source = HFDataset(
        "csv",
        data_files={"train": str(tmp_path / "train.csv"), "test": str(tmp_path / "test.csv")},
        input_column=["f1", "f2"],
        label_column="label",
    )
    data = source.load()
    assert data.train_inputs.shape == (20, 2)
    assert data.class_names == ("cat", "dog")
    np.testing.assert_array_equal(data.train_labels[:4], [1, 0, 1, 0])  # dog, cat, dog, cat
    assert data.num_classes == 2


def test_parquet_text_without_test_split_holds_out_a_share(tmp_path: Path) -> None:
    import pandas as pd

    frame = pd.DataFrame({"sentence": [f"text number {i}" for i in range(50)], "label": [i % 3 for i in range(50)]})
    frame.to_parquet(tmp_path / "train.parquet")
    data = HFDataset(
        "parquet", data_files={"train": str(tmp_path / "train.parquet")}, input_column="sentence", test_fraction=0.2
    ).load()
    assert data.is_text
    assert (len(data.train_labels), len(data.test_labels)) == (40, 10)
    assert data.num_classes == 3
    assert set(data.train_inputs) | set(data.test_inputs) == set(frame["sentence"])


def test_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for label in ("ant", "bee"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    data = HFDataset("imagefolder", data_dir=str(tmp_path)).load()
    assert data.train_inputs.shape == (12, 3, 5, 7)
    assert data.train_inputs.dtype == np.float32
    assert data.train_inputs.min() >= 0.0 and data.train_inputs.max() <= 1.0
    assert data.class_names == ("ant", "bee")
    assert np.bincount(data.test_labels).tolist() == [2, 2]


def test_missing_local_files_name_the_path(tmp_path: Path) -> None:
    source = HFDataset("csv", data_files={"train": str(tmp_path / "absent.csv")})
    with pytest.raises(FileNotFoundError, match=r"absent\.csv"):
        source.load()


def test_missing_columns_are_listed(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(ValueError, match=r"\['image', 'label'\].*\['a', 'b'\]"):
        HFDataset("csv", data_files={"train": str(tmp_path / "train.csv")}).load()
