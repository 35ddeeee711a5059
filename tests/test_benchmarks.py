"""The benchmark scripts' bookkeeping (not their speed: speed is measured by running them, never in tests):
benchmarks/step_profile.py groups the profiler's operators into parts that add up to the step, and counts
the same FLOPs as benchmarks/throughput.py; throughput.py's corrupt rows time the script's own loop
(convert_img included) beside varmix, round by round."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # a dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def step_profile():
    return _load("step_profile")


@pytest.fixture(scope="module")
def throughput():
    return _load("throughput")


@pytest.mark.parametrize("op, part", [
    ("aten::convolution_backward", "convolution, backward"),
    ("autograd::engine::evaluate_function: ConvolutionBackward0", "convolution, backward"),
    ("aten::mkldnn_convolution", "convolution, forward"),
    ("aten::conv2d", "convolution, forward"),
    ("aten::addmm", "matmul (linear layers), fwd + bwd"),
    ("aten::mm", "matmul (linear layers), fwd + bwd"),
    ("AddmmBackward0", "matmul (linear layers), fwd + bwd"),
    ("aten::native_batch_norm_backward", "batch norm, fwd + bwd"),
    ("aten::max_pool2d_with_indices_backward", "pooling, fwd + bwd"),
    ("aten::_adaptive_avg_pool2d", "pooling, fwd + bwd"),
    ("aten::_foreach_addcdiv_", "optimiser (Adam)"),
    ("Optimizer.step#Adam.step", "optimiser (Adam)"),
    ("aten::relu_", "activations, loss, augmentation, mixing, copies"),
    ("aten::copy_", "activations, loss, augmentation, mixing, copies"),
    ("aten::mean", "activations, loss, augmentation, mixing, copies"),
])
def test_operators_fall_into_their_part(step_profile, op, part):
    assert step_profile.part_of(op) == part


def _rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| small_cnn")]


def test_profile_parts_add_up_to_the_step_and_count_throughputs_flops(step_profile, capsys):
    throughput = sys.modules["throughput"]
    argv = ["--archs", "small_cnn", "--shapes", "1x28x28", "--methods", "varmixup", "--batch-size", "8",
            "--steps", "1", "--warmup", "0", "--top", "3"]
    assert step_profile.main(argv) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    parts = [r[3] for r in rows]
    assert parts == [p for p, _ in step_profile.PARTS] + [step_profile.OUTSIDE, "**the step** (unprofiled)"]
    shares = [float(r[5].rstrip("%")) for r in rows[:-1]]
    assert sum(shares) == pytest.approx(100.0, abs=0.05 * len(shares))  # each share rounded to 0.1%
    # the counted FLOPs: the parts' sum is the step's, and equals throughput.py's count for the same step
    gflop = [float(r[6]) for r in rows[:-1] if r[6] != "—"]
    assert sum(gflop) == pytest.approx(float(rows[-1][6]), abs=0.01)
    args = throughput.get_args_parser().parse_args(["--batch-size", "8", "--steps", "1", "--warmup", "0"])
    throughput.resolve_args(throughput.get_args_parser(), args)
    throughput.varmix_train_seconds("varmixup", "small_cnn", (1, 28, 28), args, throughput.resolve_device("cpu"))
    assert float(rows[-1][6]) == pytest.approx(throughput.FLOPS_PER_IMAGE["varmixup", "small_cnn", (1, 28, 28)]
                                               * 8 / 1e9, abs=0.005)
    # convolutions forward carry FLOPs, batch norm none; the note names 3 operators with their times
    by_part = {r[3]: r for r in rows}
    assert float(by_part["convolution, forward"][6]) > 0 and by_part["batch norm, fwd + bwd"][6] == "—"
    note = next(line for line in out.splitlines() if line.startswith("- small_cnn 1x28x28 varmixup"))
    assert len(re.findall(r"[\d.,]+ ms", note)) == 3


def test_bad_arguments_are_refused_by_name(step_profile, capsys):
    with pytest.raises(SystemExit):
        step_profile.main(["--archs", "vgg16"])
    assert "unknown 'vgg16'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # no mixer: refused before any work, not by make_mixer mid-run
        step_profile.main(["--methods", "at"])
    assert "unknown 'at'" in capsys.readouterr().err


def test_baseline_is_the_scripts_loop_with_its_convert_img(throughput, monkeypatch):
    """make_cifar_c converts every image with ToTensor -> ToPILImage before corrupting it; the baseline does
    too, and reports that part of its time separately."""
    import numpy as np
    from PIL import Image

    calls = []
    real = throughput.CONVERT_IMG

    def counting(img):
        calls.append(img.shape)
        return real(img)

    monkeypatch.setattr(throughput, "CONVERT_IMG", counting)
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    convert, rest = throughput.baseline_corruption_seconds("contrast", images, 2)
    assert calls == [(32, 32, 3)] * 4 and convert > 0 and rest > 0
    # the round trip is the identity on uint8 images, so the loop corrupts the images it was given
    assert all(np.array_equal(np.asarray(real(img)), img) for img in images)
    assert isinstance(real(images[0][..., 0]), Image.Image)


def test_corruption_rounds_pair_the_paths(throughput):
    import numpy as np
    import torch

    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    u8 = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    t = throughput.corruption_rounds("brightness", x, u8, 3, 2)
    assert t.shape == (2, 3) and (t > 0).all() and (t[:, 2] < t[:, 1]).all()  # convert_img is part of the loop
    alone = throughput.corruption_rounds("fog", x, None, 3, 2)  # no baseline: its columns are NaN
    assert (alone[:, 0] > 0).all() and np.isnan(alone[:, 1:]).all()


def test_corrupt_rows_report_medians_and_the_conversion(throughput, capsys):
    argv = ["--only", "corrupt", "--shapes", "1x28x28", "--corruption-images", "4", "--corruption-batch", "2",
            "--repeats", "2", "--device", "cpu"]
    assert throughput.main(argv) == 0
    out = capsys.readouterr().out
    rows = {r[4]: r for r in ([c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()
                              if line.startswith("| cpu"))}
    assert rows["baselined 5 x 5 severities"][7].endswith("x")
    convert = rows["(baseline: its convert_img alone)"]
    assert convert[6] != "—" and convert[5] == "—"  # a baseline-only row
    assert "2 round(s)" in out
    note = next(line for line in out.splitlines() if line.startswith("- corruption suite, 1x28x28"))
    assert len(re.findall(r"\d+\.\dx", note.split("round by round: ")[1].split(")")[0])) == 2
    assert re.search(r"without it the speedup would be \d+\.\dx", note)


def test_repeats_must_be_positive(throughput, capsys):
    with pytest.raises(SystemExit):
        throughput.main(["--only", "corrupt", "--repeats", "0"])
    assert "--repeats" in capsys.readouterr().err


@pytest.fixture(scope="module")
def stage_overhead():
    return _load("stage_overhead")


# An abridged `strace -f -tt -q -e trace=execve` of `dvc repro -f -s report`: dvc, its shell, the command, a
# failed PATH lookup, the kernel, and the exits in the order they came.
TRACE = """\
100  10:00:00.000000 execve("/v/bin/dvc", ["dvc", "repro", "-f", "-s", "report"], 0x1 /* 9 vars */) = 0
101  10:00:03.000000 execve("/bin/sh", ["/bin/sh", "-c", "python -m varmix notebook 07_report"], 0x1) = 0
101  10:00:03.100000 execve("/x/python", ["python", "-m", "varmix", "notebook", "07_report"], 0x1) = -1 ENOENT (No such file or directory)
101  10:00:03.200000 execve("/v/bin/python", ["python", "-m", "varmix", "notebook", "07_report"], 0x1) = 0
102  10:00:04.700000 execve("/v/bin/python", ["/v/bin/python", "-m", "ipykernel_launcher", "-f", "k.json"], 0x1) = 0
102  10:00:20.700000 +++ exited with 0 +++
101  10:00:21.200000 +++ exited with 0 +++
100  10:00:25.000000 +++ exited with 0 +++
"""


def test_trace_splits_the_stage_at_its_processes(stage_overhead):
    events = stage_overhead.parse_trace(TRACE)
    assert [e.kind for e in events] == ["exec", "exec", "exec", "exec", "exit", "exit", "exit"]  # ENOENT left out
    got = stage_overhead.phases(events, "notebook")
    want = {"dvc before": 3.2, "command before kernel": 1.5, "kernel": 16.0, "command after kernel": 0.5,
            "dvc after": 3.8}
    assert got == pytest.approx(want)
    assert sum(got.values()) == pytest.approx(25.0)
    # a command without a kernel (site): its whole run is "command before kernel"
    no_kernel = [e for e in events if e.pid != 102]
    site = stage_overhead.phases(no_kernel, "notebook")
    assert site["kernel"] == 0 and site["command before kernel"] == pytest.approx(18.0)
    with pytest.raises(ValueError, match="lacks an expected process"):
        stage_overhead.phases(events, "site")
    # the runner kills its kernel after the last cell (shutdown_kernel="immediate"): strace ends it with
    # "killed by", which it prints only when the trace keeps SIGKILL among its signals
    killed = stage_overhead.parse_trace(TRACE.replace("102  10:00:20.700000 +++ exited with 0 +++",
                                                      "102  10:00:20.700000 +++ killed by SIGKILL +++"))
    assert stage_overhead.phases(killed, "notebook") == pytest.approx(want)


def test_the_trace_keeps_sigkill_so_a_killed_kernel_ends_in_it(stage_overhead, monkeypatch, tmp_path):
    seen = {}

    def run(cmd, **kw):
        seen["cmd"] = cmd
        Path(cmd[cmd.index("-o") + 1]).write_text(TRACE)
        return subprocess.CompletedProcess(cmd, 0, "", "")
    monkeypatch.setattr(stage_overhead.subprocess, "run", run)
    assert stage_overhead.trace_stage("report", "dvc")["kernel"] == pytest.approx(16.0)
    assert "signal=SIGKILL" in seen["cmd"] and "signal=none" not in seen["cmd"]


def test_table_gives_the_overhead_beside_the_own_wall(stage_overhead):
    p = {"dvc before": 3.2, "command before kernel": 1.5, "kernel": 16.0, "command after kernel": 0.5,
         "dvc after": 3.8}
    table = stage_overhead.markdown({"report": (p, 9.7), "site": (p, None)}, 2)
    row = next(line for line in table.splitlines() if line.startswith("| report"))
    assert row == "| report | 3.20 | 1.50 | 16.00 | 0.50 | 3.80 | 9.70 | 6.30 | 25.00 | 15.30 |"
    assert "| site | 3.20 | 1.50 | 16.00 | 0.50 | 3.80 | — | — | 25.00 | 25.00 |" in table
    # the site starts no kernel: its own wall (its build) lies in its command, and no kernel overhead is made up
    site = {**p, "command before kernel": 12.0, "kernel": 0.0, "command after kernel": 0.0}
    table = stage_overhead.markdown({"site": (site, 9.9)}, 1)
    assert "| site | 3.20 | 12.00 | 0.00 | 0.00 | 3.80 | 9.90 | — | 19.00 | 9.10 |" in table


@pytest.fixture(scope="module")
def roofline():
    import os

    env = dict(os.environ)  # roofline.py pins the pipeline's kernels in os.environ at import: not for the others
    try:
        return _load("roofline")
    finally:
        os.environ.clear()
        os.environ.update(env)


def test_roofline_adds_its_layers_bounds(roofline):
    # 1 GFLOP/s peak, 1 GB/s: a layer of 2 MFLOP moving 1 MB takes 2 ms (compute-bound), one moving 3 MB (and
    # 1 MB more of im2col) 3 ms (4 ms) (memory-bound); a folded batch norm drops out with its bytes
    conv = roofline.Layer("stages.0.0 Conv2d", (1,), 2e6, 1e6, 0.0, 1.0)
    conv2 = roofline.Layer("stages.1.0 Conv2d", (1,), 2e6, 3e6, 1e6, 1.0)
    bn = roofline.Layer("stages.0.1 BatchNorm2d", (1,), 0.0, 2e6, 0.0, 1.0)
    assert conv.bound(1.0, 1.0) == pytest.approx(2e-3) and conv2.bound(1.0, 1.0, True) == pytest.approx(4e-3)
    assert roofline.model_bound([conv, conv2, bn], 1.0, 1.0, False) == pytest.approx(4e6 / 7e-3 / 1e9)
    assert roofline.model_bound([conv, conv2, bn], 1.0, 1.0, True, skip=("BatchNorm2d",)) == pytest.approx(4e6 / 6e-3 / 1e9)


def test_roofline_layers_and_relu_after_pool(roofline):
    import torch

    gen = torch.Generator().manual_seed(0)
    model = roofline.classifier(gen)
    x = torch.rand(4, 1, 28, 28, generator=gen)
    layers = roofline.layers_of(model, x, 1)
    assert [layer.name for layer in layers][:4] == ["stages.0.0 Conv2d", "stages.0.1 BatchNorm2d",
                                                   "stages.0.2 ReLU", "stages.0.3 MaxPool2d"]
    assert layers[0].flops == 2 * 4 * 32 * 28 * 28 * 9 and layers[0].im2col == 2 * 4 * 4 * 9 * 28 * 28
    swapped = roofline.relu_after_pool(model)
    assert [type(m).__name__ for m in swapped.stages[0]] == ["Conv2d", "BatchNorm2d", "MaxPool2d", "ReLU"]
    with torch.no_grad():
        assert torch.equal(swapped(x), model(x))


def test_results_are_named_for_the_machine():
    study_profile = _load("study_profile")
    assert study_profile.results_path("AMD EPYC", True, 2, "roofline").name == "roofline-cpu-amd-epyc-avx512-2threads.md"


def test_conv_backward_checks_the_bits_of_each_arrangement(capsys):
    """benchmarks/conv_backward.py: the per-image GEMMs summed in order are ATen's weight gradient bit for bit,
    the whole-batch GEMM is not, and the two-call training step ends with the same parameters; its own
    settings (portable kernels, threads) do not leak into the calling process."""
    import torch

    conv_backward = _load("conv_backward")
    before = torch.get_num_threads(), torch.backends.mkldnn.enabled
    assert conv_backward.main(["--batch-size", "4", "--rounds", "1", "--threads", "1"]) == 0
    assert (torch.get_num_threads(), torch.backends.mkldnn.enabled) == before
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| stages") or line.startswith("| small CNN")]
    bits = {(r[0], r[1]): r[-1] for r in rows}
    for layer in ("stages.0.0", "stages.1.0", "stages.2.0"):
        assert bits[(layer, "weight gradient: unfold, GEMM per image summed in order")] == "yes"
        assert bits[(layer, "weight gradient: unfold, one whole-batch GEMM")] in ("yes", "no")
    assert bits[("small CNN", "training step, two-call convolution backward")] == "yes"
    assert ("stages.0.0", "ATen, input gradient alone") not in bits  # the image needs no gradient
    with pytest.raises(SystemExit):
        conv_backward.main(["--rounds", "0"])
    assert "--rounds = 0: expected a whole number >= 1" in capsys.readouterr().err
