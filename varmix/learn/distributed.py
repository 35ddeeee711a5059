"""Data-parallel training over several processes with PyTorch's own engine (torch.distributed, torchrun,
DistributedDataParallel): the pieces ``varmix.learn.train.train_classifier``'s one loop uses. docs/DISTRIBUTED.md.

- ``resolve_processes(value, device)``: params.yaml's ``train.processes`` (an integer >= 1, or ``auto``:
  every visible GPU, 1 on a CPU) as a number of processes per node, refused with a clear message when it
  is not one or asks for more GPUs than are visible.
- ``launch(nproc, call, timings)``: starts ``python -m torch.distributed.run --nproc-per-node N
  <rendezvous> -m varmix train-worker SPEC`` and waits for it. SPEC is a torch file in a temporary folder
  with train_classifier's arguments (the data already subset, the frozen VAE, the settings) and the
  launcher's CPU settings (threads, oneDNN, deterministic algorithms). The rendezvous is ``--standalone``
  (one node, a free port), or the flags in the environment variable ``VARMIX_TORCHRUN_ARGS`` (several
  nodes: ``--nnodes 2 --node-rank 0 --rdzv-backend c10d --rdzv-endpoint host:29500 --rdzv-id RUN``).
- ``join(device)``: inside a torchrun worker, the process group (gloo on CPU, NCCL on CUDA; initialised
  here unless the caller did) and this process's ``Shard`` and device (``cuda:LOCAL_RANK``); outside
  torchrun, (None, device): the 1-process path.
- ``Shard``: this process's slice of a global batch, and the collectives the loop needs (``sum``,
  ``gather``, ``barrier``); ``on_main`` calls a writer on rank 0 only.
- ``sync_batchnorm(model, device)``: every BatchNorm2d as a batch norm whose statistics are those of the
  global batch (torch.nn.SyncBatchNorm on CUDA; ``CPUSyncBatchNorm`` on the CPU, see there why).
- ``wrap(model, device)``: DistributedDataParallel around ``StepModule(model)``: one DDP forward per
  optimiser step runs the step's whole loss (TRADES and IAT pass the classifier twice).
"""

from __future__ import annotations

import atexit
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from varmix.core import errors
from varmix.core.config import MAX_PROCESSES

TORCHRUN_ARGS_ENV = "VARMIX_TORCHRUN_ARGS"  # the rendezvous flags of a multi-node run (docs/DISTRIBUTED.md)
WORKER_COMMAND = "train-worker"  # python -m varmix train-worker SPEC (varmix.pipeline.cli)
SPEC_FORMAT = "varmix-ddp-spec-1"


# ----------------------------------------------------------------------------------------------
# how many processes
def resolve_processes(value: Any, device: torch.device, key: str = "cfg.processes") -> int:
    """The number of processes per node that ``value`` asks for on ``device``: an integer >= 1 as it is,
    ``"auto"`` every visible GPU (torch.cuda.device_count()) on CUDA and 1 on a CPU. A ValueError naming
    ``key``, the value and what is allowed otherwise, and on CUDA when more processes than visible GPUs are
    asked for (one process per GPU)."""
    allowed = f"an integer from 1 to {MAX_PROCESSES} or 'auto' (every visible GPU; 1 on a CPU)"
    if value == "auto" and isinstance(value, str):
        return torch.cuda.device_count() if device.type == "cuda" else 1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PROCESSES:
        raise ValueError(f"{key} = {value!r} is invalid: expected {allowed}")
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        if value > visible:
            shown = os.environ.get("CUDA_VISIBLE_DEVICES")
            raise ValueError(f"{key} = {value} is invalid on this machine: {visible} GPU(s) are visible"
                             + (f" (CUDA_VISIBLE_DEVICES={shown})" if shown is not None else "")
                             + f"; expected at most {visible} (one process per GPU) or 'auto'")
    return value


def check_batches(nproc: int, batch_sizes: list[int], batch_size: int, n_train: int) -> None:
    """Each of ``nproc`` processes needs at least one image of every global batch: a ValueError naming the
    smallest batch otherwise (the last of the epoch, ``n_train`` images in batches of ``batch_size``)."""
    smallest = min(batch_sizes)
    if nproc > 1 and smallest < nproc:
        raise ValueError(f"processes = {nproc} is too many for batches of {smallest} image(s): each process "
                         f"trains on a slice of every global batch, and the epoch's last batch holds "
                         f"{smallest} ({n_train} training images in batches of {batch_size}); use at most "
                         f"{smallest} processes or change train_subset / batch_size")


# ----------------------------------------------------------------------------------------------
# inside a worker
def in_worker() -> bool:
    """Whether this process was started by torchrun (its environment has LOCAL_RANK and WORLD_SIZE)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


@dataclass(frozen=True)
class Shard:
    """Process ``rank`` of ``world``: its slice of a global batch of B images is torch.tensor_split's
    ``rank``-th part (sizes differ by at most 1: the first B % world processes take one more)."""

    rank: int
    world: int

    def bounds(self, n: int) -> tuple[int, int]:
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def sizes(self, n: int) -> list[int]:
        base, extra = divmod(n, self.world)
        return [base + (r < extra) for r in range(self.world)]

    def take(self, t: torch.Tensor) -> torch.Tensor:
        """This process's rows of a global batch ``t``."""
        a, b = self.bounds(len(t))
        return t[a:b]

    def weight(self, n: int) -> float:
        """The factor of this process's mean loss over its slice of a global batch of ``n`` images that
        makes DDP's average of the gradients over processes the gradient of the global batch's mean:
        world x slice / n (1 when the slices are equal)."""
        a, b = self.bounds(n)
        return self.world * (b - a) / n

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the processes (a copy; no gradient)."""
        t = t.detach().clone()
        dist.all_reduce(t)
        return t

    def gather(self, t: torch.Tensor, n: int) -> torch.Tensor:
        """The global batch of ``n`` rows from every process's slice ``t`` (in rank order), differentiable:
        the gradient of each process's loss reaches the process whose rows it used (``_Gather``)."""
        return _Gather.apply(t, self, n)

    def barrier(self) -> None:
        dist.barrier()


def join(device: torch.device) -> tuple[Shard | None, torch.device]:
    """This process's ``Shard`` and device inside a torchrun worker with a world of more than one process
    (the process group is initialised here unless it already is: gloo on CPU, NCCL on CUDA, and on CUDA the
    device is ``cuda:LOCAL_RANK``); (None, device) otherwise (the 1-process path)."""
    if not in_worker() or int(os.environ["WORLD_SIZE"]) < 2:
        return None, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
        atexit.register(destroy)
    return Shard(dist.get_rank(), dist.get_world_size()), device


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def on_main(shard: Shard | None, write: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``write(*args, **kwargs)`` on rank 0 only (a 1-process run, ``shard`` None, is rank 0): the one
    place a distributed run writes files, so the other processes never touch the output folder."""
    if shard is None or shard.rank == 0:
        return write(*args, **kwargs)
    return None


# ----------------------------------------------------------------------------------------------
# collectives with gradients (hand-written: torch.distributed.nn.functional.all_gather's backward uses
# all_to_all, and this loop needs only a sum and a gather of unequal slices, both plain all_reduce/all_gather)
class _AllReduceSum(torch.autograd.Function):
    """y = sum over processes of x; the backward sums the gradients over processes, so each process gets
    d(sum of every process's loss)/dx."""

    @staticmethod
    def forward(ctx, x):
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, g):
        g = g.clone()
        dist.all_reduce(g)
        return g


class _Gather(torch.autograd.Function):
    """Every process's slice (unequal sizes allowed: each is padded to the largest for all_gather) ->
    the global batch; the backward sums the global gradient over processes and returns this slice's rows."""

    @staticmethod
    def forward(ctx, x, shard: Shard, n: int):
        sizes = shard.sizes(n)
        pad = max(sizes)
        padded = x.new_zeros((pad, *x.shape[1:]))
        padded[:len(x)] = x
        parts = [torch.empty_like(padded) for _ in range(shard.world)]
        dist.all_gather(parts, padded.contiguous())
        ctx.shard, ctx.n = shard, n
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, g):
        g = g.contiguous().clone()
        dist.all_reduce(g)
        a, b = ctx.shard.bounds(ctx.n)
        return g[a:b], None, None


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are the global batch's (every process's slice), for gloo on
    the CPU. Hand-written because torch.nn.SyncBatchNorm refuses CPU tensors and its kernels
    (batch_norm_stats, ...) have no CPU implementation (torch 2.14). Two passes: the mean from the summed
    per-channel sums and counts, then the biased variance from the summed squared deviations; normalises
    with them and updates the running statistics as BatchNorm2d does (running_var with the unbiased
    variance). Gradients flow through the sums (``_AllReduceSum``). Outside training, or in a 1-process
    run, it is BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        dims = (0, 2, 3)
        count = _AllReduceSum.apply(x.new_full((1,), x.numel() // c))
        mean = _AllReduceSum.apply(x.sum(dims)) / count
        xc = x - mean.view(1, c, 1, 1)
        var = _AllReduceSum.apply((xc * xc).sum(dims)) / count
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            with torch.no_grad():
                n = float(count)
                self.running_mean.mul_(1 - f).add_(mean.detach(), alpha=f)
                self.running_var.mul_(1 - f).add_(var.detach() * (n / max(n - 1, 1)), alpha=f)
        y = xc * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every BatchNorm2d replaced by a synchronised one sharing its parameters and buffers
    (the same Parameter objects, the same state_dict keys): torch.nn.SyncBatchNorm on CUDA,
    ``CPUSyncBatchNorm`` on the CPU."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = CPUSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
            if child.affine:
                sync.weight, sync.bias = child.weight, child.bias
            if child.track_running_stats:
                sync.running_mean, sync.running_var = child.running_mean, child.running_var
                sync.num_batches_tracked = child.num_batches_tracked
            sync.train(child.training)
            setattr(model, name, sync)
        else:
            sync_batchnorm(child, device)
    return model


class StepModule(nn.Module):
    """What DDP wraps: ``forward(loss_fn)`` returns ``loss_fn(self.model)``, so one DDP forward covers a step
    however many times its loss passes through the classifier (DDP expects one forward per backward)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, loss_fn: Callable[[nn.Module], torch.Tensor]) -> torch.Tensor:
        return loss_fn(self.model)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``StepModule(model)``, without syncing buffers at each forward: the
    synchronised batch norms give every process the same running statistics."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(StepModule(model), device_ids=[device.index] if device.type == "cuda" else None,
                                   forward_sync_buffers=False)


# ----------------------------------------------------------------------------------------------
# the launcher and the worker
class WorkersFailed(errors.UserError):
    """torchrun's workers stopped with an error (their tracebacks are printed above, prefixed by rank)."""

    exit_code = 1


def torchrun_command(nproc: int, spec: Path) -> list[str]:
    """The command that starts ``nproc`` workers on this node: ``--standalone`` or the rendezvous flags of
    ``VARMIX_TORCHRUN_ARGS`` (which may not set the processes per node: that is params.yaml's)."""
    extra = shlex.split(os.environ.get(TORCHRUN_ARGS_ENV, ""))
    clash = [a.split("=")[0] for a in extra if a.split("=")[0] in ("--nproc-per-node", "--nproc_per_node", "--standalone")]
    if clash:
        raise ValueError(f"{TORCHRUN_ARGS_ENV} = {os.environ[TORCHRUN_ARGS_ENV]!r} sets {clash[0]}: expected only "
                         f"rendezvous flags (--nnodes, --node-rank, --rdzv-backend, --rdzv-endpoint, --rdzv-id); "
                         f"the processes per node are params.yaml's train.processes")
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
            *(extra or ["--standalone"]), "-m", "varmix", WORKER_COMMAND, str(spec)]


def launch(nproc: int, call: dict[str, Any]) -> None:
    """Run ``varmix.learn.train.train_classifier(**call)`` in ``nproc`` torchrun workers on this node and wait;
    a ``WorkersFailed`` when torchrun exits with an error. The workers get this process's thread count
    (divided among them), oneDNN switch and deterministic-algorithms mode, and its environment."""
    settings = {"threads": max(1, torch.get_num_threads() // nproc), "mkldnn": torch.backends.mkldnn.enabled,
                "deterministic": torch.are_deterministic_algorithms_enabled()}
    with tempfile.TemporaryDirectory(prefix="varmix-ddp-") as tmp:
        spec = Path(tmp) / "spec.pt"
        torch.save({"format": SPEC_FORMAT, "call": call, "settings": settings}, spec)
        cmd = torchrun_command(nproc, spec)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(settings["threads"]))}
        proc = subprocess.Popen(cmd, env=env)
        try:
            rc = proc.wait()
        except BaseException:  # Ctrl-C or SIGTERM here: torchrun stops its workers on SIGTERM (a SIGKILL
            proc.terminate()   # would leave them running: they are in sessions of their own)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    if rc != 0:
        raise WorkersFailed(f"the {nproc} training processes stopped with exit code {rc} (torchrun: "
                            f"{shlex.join(cmd[1:])}); their errors are printed above")
