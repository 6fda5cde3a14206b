"""Training on a cluster, on CPU with tiny models: a signal stops training (or evaluation) with a
checkpoint and exit code 75 and --resume ends with the uninterrupted run's weights; a signal
that reaches one rank stops all ranks at the same iteration; torchrun and srun-style
environments train with DDP; two "machines" in network namespaces train over TCP; a killed rank
ends the others with a message naming it; torchrun's elastic restart resumes exactly."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from focal_det.data import ShapesSpec, ensure_generated
from focal_det.engine.launcher import env_world, free_port
from focal_det.engine.preemption import EXIT_PREEMPTED
from tests.common import REPO, SHAPES_CONFIG, tiny_run_opts

pytestmark = pytest.mark.slow  # subprocesses / training runs (make test-slow)

SPEC = ShapesSpec(num_train=16, num_val=60, image_size=64, max_objects=4, min_size=12,
                  max_size=40)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return ensure_generated(SPEC, root=str(tmp_path_factory.mktemp("data")))


def _args(data, out, iters=40, eval_period=0, extra=(), batch=2):
    return ["--config-file", SHAPES_CONFIG, "--vis-images", "-1",
            "--register-coco", "pt", os.path.join(data, "train.json"), data,
            "--register-coco", "pv", os.path.join(data, "val.json"), data, *extra,
            "OUTPUT_DIR", str(out), "DATASETS.TRAIN", "('pt',)", "DATASETS.TEST", "('pv',)",
            *tiny_run_opts(batch=batch, workers=1), "SOLVER.MAX_ITER", str(iters),
            "SOLVER.WARMUP_ITERS", "3", "SOLVER.STEPS", f"({iters * 3 // 4},)",
            "SOLVER.CHECKPOINT_PERIOD", "1000", "TEST.EVAL_PERIOD", str(eval_period), "SEED", "7"]


class Child:
    """A training process whose output goes to a log shown when an assertion fails."""

    def __init__(self, cmd, log, env=None, wrap=()):
        self.log = log
        self.file = open(log, "w")
        self.proc = subprocess.Popen([*wrap, *cmd], stdout=self.file, stderr=subprocess.STDOUT,
                                     cwd=REPO, env={**os.environ, **(env or {})},
                                     start_new_session=True)

    def text(self):
        if not self.file.closed:
            self.file.flush()
        with open(self.log) as f:
            return f.read()

    def wait_for(self, needle, timeout=300):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if needle in self.text():
                return
            assert self.proc.poll() is None, f"ended before {needle!r}:\n{self.text()[-6000:]}"
            time.sleep(0.1)
        self.kill()
        raise AssertionError(f"no {needle!r} in {timeout} s:\n{self.text()[-6000:]}")

    def wait(self, timeout=600):
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"did not end in {timeout} s:\n{self.text()[-6000:]}")
        self.file.close()
        return rc

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def signal(self, sig):
        self.proc.send_signal(sig)


def _train_net(args):
    return [sys.executable, "train_net.py", *args]


def _run(cmd, log, env=None, wrap=(), expect=0, timeout=600):
    child = Child(cmd, log, env, wrap)
    rc = child.wait(timeout)
    assert rc == expect, f"exit {rc} (expected {expect}):\n{child.text()[-6000:]}"
    return child


def _weights(path):
    return torch.load(path, weights_only=True, map_location="cpu")["model"]


def _assert_same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs between {a} and {b}"


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted run every interrupted one must end equal to."""
    out = tmp_path_factory.mktemp("reference")
    _run(_train_net(_args(data, out, eval_period=20)), out / "log")
    return out / "model_final.pth"


def _preempted(out):
    with open(out / "preempted.json") as f:
        return json.load(f)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_checkpoints_exits_75_and_resume_is_exact(sig, data, reference, tmp_path):
    out = tmp_path / "run"
    child = Child(_train_net(_args(data, out, eval_period=20)), tmp_path / "log1")
    child.wait_for("Starting training")
    child.wait_for("iter: 19")  # mid-run, long before any periodic checkpoint (period 1000)
    child.signal(sig)
    child.signal(sig)  # a second signal during the stop changes nothing
    rc = child.wait(120)
    assert rc == EXIT_PREEMPTED, child.text()[-6000:]
    state = _preempted(out)
    assert state["signal"] == sig.name and 19 <= state["completed_iteration"] < 39
    assert (out / f"{state['checkpoint']}.pth").exists()
    assert (out / "last_checkpoint").read_text().strip() == f"{state['checkpoint']}.pth"
    if sig != signal.SIGTERM:
        return  # the same path after the handler; resumed once, for SIGTERM
    resumed = _run(_train_net(["--resume", *_args(data, out, eval_period=20)]), tmp_path / "log2")
    assert f"from iteration {state['completed_iteration'] + 1}" in resumed.text()
    _assert_same_weights(out / "model_final.pth", reference)


def test_signal_during_evaluation_is_honoured(data, reference, tmp_path):
    out = tmp_path / "run"
    child = Child(_train_net(_args(data, out, eval_period=20)), tmp_path / "log1")
    child.wait_for("Start inference")  # the periodic evaluation after iteration 19
    child.signal(signal.SIGTERM)
    rc = child.wait(120)
    assert rc == EXIT_PREEMPTED, child.text()[-6000:]
    assert "Inference done 60/60" not in child.text()  # it did not finish the evaluation
    assert _preempted(out)["completed_iteration"] == 19
    _run(_train_net(["--resume", *_args(data, out, eval_period=20)]), tmp_path / "log2")
    _assert_same_weights(out / "model_final.pth", reference)


def test_eval_only_exits_promptly_on_a_signal(data, reference, tmp_path):
    args = ["--eval-only", *_args(data, tmp_path / "eval"), "MODEL.WEIGHTS", str(reference)]
    child = Child(_train_net(args), tmp_path / "log")
    child.wait_for("Start inference")
    start = time.time()
    child.signal(signal.SIGTERM)
    assert child.wait(60) == EXIT_PREEMPTED, child.text()[-6000:]
    assert time.time() - start < 30
    assert "during evaluation" in child.text()


def _srun_env(rank, world, port):
    return {"SLURM_PROCID": str(rank), "SLURM_NTASKS": str(world), "SLURM_LOCALID": str(rank),
            "SLURM_NTASKS_PER_NODE": str(world), "SLURM_NNODES": "1",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}


def _srun(data, out, tmp_path, name, extra_args=(), env=None, iters=40):
    port = free_port()
    return [Child(_train_net([*extra_args, *_args(data, out, iters=iters, batch=4)]),
                  tmp_path / f"{name}{r}.log", {**_srun_env(r, 2, port), **(env or {})})
            for r in range(2)]


@pytest.fixture(scope="module")
def reference_two_ranks(data, tmp_path_factory):
    """The uninterrupted 2-rank run (srun-style environment, 4 images a batch)."""
    tmp = tmp_path_factory.mktemp("reference_two_ranks")
    for c in _srun(data, tmp / "out", tmp, "ref"):
        assert c.wait(600) == 0, c.text()[-6000:]
    return tmp / "out" / "model_final.pth"


def test_env_world_reads_torchrun_and_srun():
    assert env_world({}) is None
    w = env_world({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                   "MASTER_ADDR": "a", "MASTER_PORT": "1"})
    assert (w.rank, w.world_size, w.local_rank, w.local_world_size, w.launcher) == \
        (1, 4, 1, 2, "torchrun")
    w = env_world({**_srun_env(1, 2, 5), "SLURM_NTASKS_PER_NODE": ""})
    assert (w.rank, w.world_size, w.local_world_size, w.launcher) == (1, 2, 2, "srun")
    assert env_world({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) is None  # a plain sbatch
    with pytest.raises(RuntimeError, match="MASTER_PORT is not set"):
        env_world({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "MASTER_ADDR": "a"})


def test_signal_to_one_srun_rank_stops_both_at_the_same_iteration(data, reference_two_ranks,
                                                                   tmp_path):
    out = tmp_path / "run"
    ranks = _srun(data, out, tmp_path, "run")
    ranks[0].wait_for("iter: 19")  # rank 0 logs
    ranks[1].signal(signal.SIGTERM)  # rank 1 only
    codes = [c.wait(180) for c in ranks]
    assert codes == [EXIT_PREEMPTED] * 2, [c.text()[-3000:] for c in ranks]
    done = _preempted(out)["completed_iteration"]
    for c in ranks:
        assert f"after iteration {done}:" in c.text()  # both ranks, the same iteration
    for c in _srun(data, out, tmp_path, "resumed", extra_args=["--resume"]):
        assert c.wait(600) == 0, c.text()[-6000:]
    _assert_same_weights(out / "model_final.pth", reference_two_ranks)


def test_killed_rank_ends_the_others_with_its_name(data, tmp_path):
    out = tmp_path / "run"
    ranks = _srun(data, out, tmp_path, "run", env={"FOCAL_DET_PEER_TIMEOUT": "10"}, iters=400)
    ranks[0].wait_for("iter: 19")
    ranks[1].proc.send_signal(signal.SIGKILL)
    start = time.time()
    rc = ranks[0].wait(120)
    assert rc != 0 and time.time() - start < 60, ranks[0].text()[-6000:]
    assert "rank 1 is lost" in ranks[0].text(), ranks[0].text()[-6000:]
    ranks[1].wait(30)


def _torchrun(nproc, *extra):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", *extra, "train_net.py"]


def _with(args, key, value):
    args = list(args)
    args[args.index(key) + 1] = value
    return args


def test_torchrun_trains_one_ddp_job_and_restarts_elastically(data, reference_two_ranks,
                                                              tmp_path):
    """Under torchrun the two workers form one DDP job (world size 2, not two trainings: the
    same weights as the srun-style 2-rank run); with --max-restarts 1 a killed worker makes
    torchrun restart both, which resume from the last checkpoint and end with the
    uninterrupted job's weights."""
    env = {"OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    child = Child([*_torchrun(2, "--max-restarts=1"),
                   *_with(_args(data, out, batch=4), "SOLVER.CHECKPOINT_PERIOD", "10")],
                  tmp_path / "run.log", env=env)
    child.wait_for("iter: 19")
    workers = subprocess.run(["pgrep", "-P", str(child.proc.pid)], capture_output=True,
                             text=True).stdout.split()
    assert len(workers) == 2, workers
    os.kill(int(workers[1]), signal.SIGKILL)
    assert child.wait(600) == 0, child.text()[-6000:]
    text = child.text()
    assert "World size: 2" in text and "World size: 1" not in text
    assert "Starting training from iteration 20" in text, text[-6000:]
    _assert_same_weights(out / "model_final.pth", reference_two_ranks)


def _netns_available():
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = subprocess.run(["ip", "netns", "add", "fdprobe"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"ip netns add failed: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", "fdprobe"], capture_output=True)
    return None


@pytest.fixture
def two_hosts():
    why = _netns_available()
    if why:
        pytest.skip(f"cannot make network namespaces here: {why}")
    names, addrs = ("fd_h0", "fd_h1"), ("10.231.7.1", "10.231.7.2")
    for n in names:  # left over from a run that was killed
        subprocess.run(["ip", "netns", "del", n], capture_output=True)
    cmds = [["ip", "netns", "add", names[0]], ["ip", "netns", "add", names[1]],
            ["ip", "link", "add", "fd_v0", "type", "veth", "peer", "name", "fd_v1"],
            ["ip", "link", "set", "fd_v0", "netns", names[0]],
            ["ip", "link", "set", "fd_v1", "netns", names[1]]]
    for i in range(2):
        cmds += [["ip", "-n", names[i], "addr", "add", f"{addrs[i]}/24", "dev", f"fd_v{i}"],
                 ["ip", "-n", names[i], "link", "set", f"fd_v{i}", "up"],
                 ["ip", "-n", names[i], "link", "set", "lo", "up"]]
    try:
        for cmd in cmds:
            subprocess.run(cmd, check=True, capture_output=True, text=True)
        yield names, addrs
    finally:
        for n in names:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def test_two_machines_in_network_namespaces_train_over_tcp(data, tmp_path, two_hosts):
    """--num-machines 2 (Detectron2's interface) and torchrun's rendezvous, each rank in its
    own namespace with its own address: the job is one DDP run (same result both ways)."""
    names, addrs = two_hosts
    env = {"GLOO_SOCKET_IFNAME": "", "OMP_NUM_THREADS": "1"}
    outs = []
    for how in ("launch", "torchrun"):
        out = tmp_path / how
        port = free_port()
        children = []
        for r in range(2):
            wrap = ["ip", "netns", "exec", names[r]]
            e = {**env, "GLOO_SOCKET_IFNAME": f"fd_v{r}"}
            if how == "launch":
                cmd = _train_net(["--num-machines", "2", "--machine-rank", str(r), "--dist-url",
                                  f"tcp://{addrs[0]}:{port}", *_args(data, out, iters=10, batch=4)])
            else:
                cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2",
                       "--nproc_per_node=1", f"--node_rank={r}", f"--master_addr={addrs[0]}",
                       f"--master_port={port}", "train_net.py", *_args(data, out, iters=10, batch=4)]
            children.append(Child(cmd, tmp_path / f"{how}{r}.log", e, wrap))
        for c in children:
            assert c.wait(600) == 0, c.text()[-6000:]
        assert "Rank of current process: 0. World size: 2" in children[0].text()  # rank 0 logs
        outs.append(out / "model_final.pth")
    _assert_same_weights(*outs)
