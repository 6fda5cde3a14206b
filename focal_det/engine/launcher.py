"""Starting the processes of a run, whichever launcher the user has.

- ``torchrun`` (and its elastic restarts) and ``srun`` start the processes themselves and say so
  in the environment (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``;
  ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` with ``MASTER_ADDR``/``MASTER_PORT``):
  each process joins the process group from there (:func:`env_world`), no flag needed.
- Otherwise Detectron2's interface: ``--num-gpus`` processes per machine, ``--num-machines``,
  ``--machine-rank``, ``--dist-url``; one process needs no process group. Unlike Detectron2's
  ``launch`` (NCCL only), the backend follows the device: NCCL with CUDA, gloo on CPU (one
  process per CPU machine).

Every process group gets ``--dist-timeout`` (default 10 minutes; Detectron2's is 30), and a
watchdog (``watchdog.py``) ends every rank, naming the lost one, when a rank stops answering.
A process that ends by a signal or with an error makes the launcher end the others and say
which rank it was. The launcher passes the signals of ``--preempt-signals`` on to the processes
it started (each stops with a checkpoint and ``preemption.EXIT_PREEMPTED``); a run that ends so,
or by a lost rank (``watchdog.EXIT_PEER_LOST``), ends the launcher with the same code.
"""
import logging
import multiprocessing
import os
import signal
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm

from ..errors import FocalDetError
from . import preemption, watchdog

logger = logging.getLogger("focal_det")


class LaunchError(FocalDetError, RuntimeError):
    pass


@dataclass
class World:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    launcher: str  # "torchrun" or "srun"


def _int(env, key: str) -> Optional[int]:
    value = env.get(key)
    return int(value) if value not in (None, "") else None


def env_world(env=None) -> Optional[World]:
    """The process's place in a run started by torchrun or srun, or None (a plain start)."""
    env = os.environ if env is None else env
    if _int(env, "WORLD_SIZE") is not None and _int(env, "RANK") is not None:
        world = World(_int(env, "RANK"), _int(env, "WORLD_SIZE"), _int(env, "LOCAL_RANK") or 0,
                      _int(env, "LOCAL_WORLD_SIZE") or 1, "torchrun")
    elif (_int(env, "SLURM_NTASKS") or 1) > 1 and _int(env, "SLURM_PROCID") is not None:
        ntasks = _int(env, "SLURM_NTASKS")
        per_node = _int(env, "SLURM_NTASKS_PER_NODE") or ntasks // (_int(env, "SLURM_NNODES") or 1)
        world = World(_int(env, "SLURM_PROCID"), ntasks, _int(env, "SLURM_LOCALID") or 0,
                      per_node, "srun")
    else:
        return None
    if world.world_size <= 1:
        return None
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if not env.get(key):
            raise LaunchError(f"{world.launcher} started this process (rank {world.rank} of "
                              f"{world.world_size}), but {key} is not set: export MASTER_ADDR "
                              "(the first node's address) and MASTER_PORT (a free port) in the "
                              "job script (README, Running on a cluster)")
    return world


def _backend(device: str) -> str:
    return "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"


def _local_group(local_world_size: int) -> None:
    """Detectron2's per-machine process group (``comm.get_local_rank()`` needs it)."""
    if hasattr(comm, "create_local_process_group"):  # Detectron2 after v0.6
        comm.create_local_process_group(local_world_size)
        return
    num_machines = dist.get_world_size() // local_world_size  # v0.6: as its launch does
    machine = dist.get_rank() // local_world_size
    for i in range(num_machines):
        group = dist.new_group(list(range(i * local_world_size, (i + 1) * local_world_size)))
        if i == machine:
            comm._LOCAL_PROCESS_GROUP = group


def _elastic_store(rank: int, world_size: int, timeout: timedelta):
    """torchrun's store, with a prefix per restart: the agent's store outlives a restart, and
    the new workers must not read the old ones' addresses (gloo then fails to connect)."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=not agent and rank == 0, timeout=timeout)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"focal_det/attempt_{attempt}/", store)


def _join(init_method: str, rank: int, world_size: int, local_rank: int,
          local_world_size: int, device: str, timeout_s: float) -> None:
    backend = _backend(device)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    timeout = timedelta(seconds=timeout_s)
    if init_method == "env://":
        dist.init_process_group(backend=backend, store=_elastic_store(rank, world_size, timeout),
                                world_size=world_size, rank=rank, timeout=timeout)
    else:
        dist.init_process_group(backend=backend, init_method=init_method,
                                world_size=world_size, rank=rank, timeout=timeout)
    _local_group(local_world_size)
    watchdog.start(timeout_s=min(timeout_s, watchdog.peer_timeout()))
    comm.synchronize()


def _run_and_leave(main_func, args):
    """``main_func`` in a process group; then all ranks leave together. A failed collective
    (a peer died) waits for the watchdog's verdict naming the lost rank."""
    try:
        result = main_func(args)
    except Exception as e:
        watchdog.await_verdict(e)
        raise
    watchdog.stop()
    comm.synchronize()
    dist.destroy_process_group()
    return result


def _worker(local_rank, main_func, args, world_size, num_per_machine, device):
    rank = args.machine_rank * num_per_machine + local_rank
    _join(args.dist_url, rank, world_size, local_rank, num_per_machine, device,
          args.dist_timeout)
    _run_and_leave(main_func, args)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now (``--dist-url auto``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _forward_signals(names) -> None:
    """The launcher process passes the signals the run handles (``--preempt-signals``) on to
    its workers, where each stops with a checkpoint; any other signal acts on the launcher as
    it would on any process."""
    def forward(signum, frame):
        for child in multiprocessing.active_children():
            os.kill(child.pid, signum)

    for name in preemption.signal_names(names):
        signal.signal(getattr(signal, name), forward)


def launch(main_func, args, device: str):
    """Run ``main_func(args)`` in every process of the run (see module docstring)."""
    world = env_world()
    if world is not None:
        if args.num_gpus != 1 or args.num_machines != 1:
            raise LaunchError(f"{world.launcher} starts the processes: drop --num-gpus and "
                              "--num-machines (they are for train_net.py's own launcher)")
        if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") not in ("", "0"):
            args.resume = True  # an elastic restart continues from the last checkpoint
        _join("env://" if world.launcher == "torchrun" else
              f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
              world.rank, world.world_size, world.local_rank, world.local_world_size, device,
              args.dist_timeout)
        return _run_and_leave(main_func, args)
    world_size = args.num_gpus * args.num_machines
    if world_size == 1:
        return main_func(args)
    dist_url = args.dist_url
    if dist_url == "auto":
        if args.num_machines != 1:
            raise LaunchError("--dist-url auto works on one machine only")
        dist_url = f"tcp://127.0.0.1:{free_port()}"
    args.dist_url = dist_url
    _forward_signals(args.preempt_signals)
    try:
        mp.spawn(_worker, nprocs=args.num_gpus, daemon=False,
                 args=(main_func, args, world_size, args.num_gpus, device))
    except mp.ProcessExitedException as e:
        rank = args.machine_rank * args.num_gpus + e.error_index
        if e.exit_code in (preemption.EXIT_PREEMPTED, watchdog.EXIT_PEER_LOST):
            sys.exit(e.exit_code)
        how = f"signal {e.signal_name}" if e.signal_name else f"exit code {e.exit_code}"
        sys.exit(f"rank {rank} ended with {how}; the other processes of this machine were "
                 "stopped. Continue with --resume.")
