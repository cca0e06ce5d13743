"""The multi-GPU placement's logic (embedkit/backend/split.py), without a GPU: parsing and checking
`--tensor-split`, `--split-mode`, `--main-gpu` and EMBEDKIT_CUDA_DEVICES, llama.cpp's assignment of layers
to devices, and the CLI's one-line errors."""

from __future__ import annotations

import pytest

from embedkit.backend.split import (
    layer_devices,
    normalized_shares,
    parse_devices,
    parse_tensor_split,
    split_placement,
)
from embedkit.errors import InputError


def test_parse_tensor_split():
    assert parse_tensor_split("3,1") == [3.0, 1.0]
    assert parse_tensor_split(" 0.5 , 0.5 ") == [0.5, 0.5]
    assert parse_tensor_split(None) is None
    assert parse_tensor_split("") is None


@pytest.mark.parametrize(
    "text,named", [("3,x", "'x'"), ("1,-1", "'-1'"), ("1,,2", "''"), ("nan,1", "'nan'"), ("inf", "'inf'")]
)
def test_parse_tensor_split_rejects(text, named):
    with pytest.raises(InputError) as e:
        parse_tensor_split(text)
    msg = str(e.value)
    assert "--tensor-split" in msg and named in msg and "\n" not in msg


def test_normalized_shares():
    assert normalized_shares([3, 1], 2, [1, 1]) == [0.75, 0.25]
    assert normalized_shares([1], 3, [1, 1, 1]) == [1.0, 0.0, 0.0]  # missing shares are 0, as llama.cpp
    assert normalized_shares(None, 2, [6, 2]) == [0.75, 0.25]  # the default (free memory)
    assert normalized_shares([0, 0], 2, [1, 3]) == [0.25, 0.75]  # all zero: the default
    with pytest.raises(InputError, match="3 shares for 2 CUDA device"):
        normalized_shares([1, 1, 1], 2, [1, 1])


def test_parse_devices():
    assert parse_devices("0,0", 1) == [0, 0]
    assert parse_devices(None, 2) == [0, 1]
    with pytest.raises(InputError, match="GPU 2 does not exist"):
        parse_devices("0,2", 2)
    with pytest.raises(InputError, match="'a' is not a GPU number"):
        parse_devices("0,a", 2)


@pytest.mark.parametrize(
    "n_layer,ngl,shares,layers,out",
    [
        (32, -1, [0.5, 0.5], [0] * 17 + [1] * 15, 1),  # llama.cpp: the output counts as a layer
        (3, -1, [0.5, 0.5], [0, 0, 1], 1),
        (4, 4, [0.5, 0.5], [0, 0, 1, 1], None),  # -ngl n_layer: the output head on the CPU
        (4, 2, [0.5, 0.5], [None, None, 0, 1], None),  # the first layers stay on the CPU
        (4, -1, [0.0, 1.0], [1, 1, 1, 1], 1),
        (4, 99, [0.25, 0.25, 0.5], [0, 0, 1, 2], 2),  # j / 5 against the points .25, .5, 1
    ],
)
def test_layer_devices_as_llama_cpp(n_layer, ngl, shares, layers, out):
    assert layer_devices(n_layer, ngl, shares) == (layers, out)


class FakeBackend:
    """Stands for a device backend: split_placement only places it."""

    def __init__(self, name):
        self.name = name


def test_split_placement_layer_and_main_gpu():
    cpu, d0, d1 = FakeBackend("cpu"), FakeBackend("d0"), FakeBackend("d1")
    p = split_placement(3, -1, [d0, d1], cpu, [0.5, 0.5])
    assert p.layers == [d0, d0, d1] and p.output is d1 and p.input is d0
    assert [b.name for b in p.backends] == ["d0", "d1"]
    p = split_placement(3, -1, [d0, d1], cpu, [0.5, 0.5], main_gpu=0)
    assert p.output is d0 and p.input is d0
    p = split_placement(3, 2, [d0, d1], cpu, [0.5, 0.5])
    assert p.layers == [cpu, d0, d1] and p.output is cpu and p.input is cpu
    p = split_placement(3, -1, [d0, d1], cpu, [0.5, 0.5], mode="none", main_gpu=1)
    assert p.layers == [d1] * 3 and p.output is d1


def test_separate_stages():
    """A device the forward comes back to gets another backend for the later run (the CPU keeps one)."""
    from embedkit.backend.split import separate_stages

    cpu, d0, d1 = FakeBackend("cpu"), FakeBackend("d0"), FakeBackend("d1")
    made = {}

    def another(b, k):
        return None if b is cpu else made.setdefault((b.name, k), FakeBackend(f"{b.name}+{k}"))

    p = separate_stages(split_placement(3, -1, [d0, d1], cpu, [0.5, 0.5], main_gpu=0), another)
    assert [b.name for b in (p.input, *p.layers, p.output)] == ["d0", "d0", "d0", "d1", "d0+1"]
    p = separate_stages(split_placement(3, -1, [d0, d1], cpu, [0.5, 0.5], main_gpu=1), another)
    assert [b.name for b in (p.input, *p.layers, p.output)] == ["d1", "d0", "d0", "d1+1", "d1+1"]
    p = separate_stages(split_placement(3, 3, [d0, d1], cpu, [0.5, 0.5]), another)
    assert [b.name for b in (p.input, *p.layers, p.output)] == ["cpu", "d0", "d0", "d1", "cpu"]


def test_split_placement_errors():
    cpu, d0 = FakeBackend("cpu"), FakeBackend("d0")
    with pytest.raises(InputError, match="--main-gpu 3: there are 1 CUDA device"):
        split_placement(2, -1, [d0], cpu, [1.0], main_gpu=3)
    with pytest.raises(InputError, match="row .*not implemented"):
        split_placement(2, -1, [d0], cpu, [1.0], mode="row")
    with pytest.raises(InputError, match="--split-mode must be one of none, layer, row, not 'rows'"):
        split_placement(2, -1, [d0], cpu, [1.0], mode="rows")


def test_make_placement_checks_before_any_device():
    from embedkit.backend.placement import make_placement

    with pytest.raises(InputError, match="'x' is not a number"):
        make_placement("cpu", tensor_split="1,x")
    with pytest.raises(InputError, match="not implemented"):
        make_placement("cpu", split_mode="row")
    with pytest.raises(InputError, match="--main-gpu must be >= 0"):
        make_placement("cpu", main_gpu=-1)
    factory = make_placement("cpu", split_mode="layer", tensor_split="1,1")
    assert factory(2).layers[0].name == "cpu"  # --device cpu: the split options change nothing


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--tensor-split", "1,abc"], "error: --tensor-split '1,abc': 'abc' is not a number"),
        (["-ts", "1,-1"], "error: --tensor-split '1,-1': '-1' must be a finite number >= 0"),
        (["--split-mode", "diagonal"], "error: --split-mode must be one of none, layer, row, not 'diagonal'"),
        (["-sm", "row"], "error: --split-mode row (matrices split across GPUs) is not implemented yet"),
        (["--main-gpu", "-2"], "error: --main-gpu must be >= 0, not -2"),
    ],
)
def test_cli_generate_split_errors(tmp_path, capsys, args, expected):
    """Bad split options: one line naming the value, exit code 1, before any model loads."""
    from embedkit.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["generate", "-m", str(tmp_path / "absent.gguf"), "-p", "hi", "--device", "cpu", *args])
    err = capsys.readouterr().err
    assert e.value.code == 1
    assert err.splitlines() == [err.strip()] and err.startswith(expected), err


def test_cli_serve_split_error(capsys):
    """`serve` takes the same options: a bad share is one line before anything starts."""
    from embedkit.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["serve", "-m", "none.gguf", "--tensor-split", "2,two"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.splitlines() == [err.strip()], err
    assert err.startswith("error: --tensor-split '2,two': 'two' is not a number"), err


def test_layer_split_over_two_cpu_backends(tmp_path, monkeypatch):
    """The split's wiring without a GPU: a 3-layer llama over two CPU backends (as llama.cpp splits 1,1:
    layers 0-1 on the first, layer 2 and the output head on the second) gives the one-backend logits over a
    prompt and decode steps, and the placement's hand-off is asked once per forward."""
    import numpy as np

    from embedkit.backend.cpu import CPUBackend
    from embedkit.models import load_model
    from embedkit.testing.random_quant import llama_spec, write_random_gguf

    monkeypatch.setenv("EMBEDKIT_CPU_MATH", "float32")
    path = write_random_gguf(tmp_path / "t.gguf", "llama", *llama_spec(32, 3, 2, 1, 64, 48, "Q8_0", 32), seed=27)
    first, second, host = CPUBackend(), CPUBackend(), CPUBackend()
    asked = []

    def hand_off(x, src, dst):
        asked.append((src, dst))
        return None  # no direct copy between these: the host path

    split = load_model(path, split_placement(3, -1, [first, second], host, [0.5, 0.5], hand_off=hand_off))
    assert split.placement.layers == [first, first, second] and split.placement.output is second
    one = load_model(path)
    rng = np.random.default_rng(27)
    s1, s2, pos = one.new_state(16), split.new_state(16), 0
    for n in (4, 1, 1, 1):
        ids = rng.integers(0, 48, n).astype(np.int32)
        np.testing.assert_array_equal(split.forward(ids, s2, pos, all_positions=True),
                                      one.forward(ids, s1, pos, all_positions=True))  # fmt: skip
        pos += n
    assert asked == [(first, second)] * 4
