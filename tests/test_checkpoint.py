"""Checkpoints: atomic writes leave the previous file intact; loading never runs code."""
import os
import pickle
import signal
import subprocess
import threading
import sys
import time

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from focal_det.checkpoint import (
    FocalCheckpointer,
    UnsafeCheckpointError,
    atomic_write,
    load_pkl_safely,
    numpy_state,
)
from tests.common import REPO, CodeOnLoad, get_tiny_cfg


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "model.pth"
    atomic_write(str(path), lambda f: f.write(b"old"))

    def half_write(f):
        f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(path), half_write)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.pth"]  # no temporary left behind


def test_save_and_load_round_trip(tmp_path):
    cfg = get_tiny_cfg()
    src = build_model(cfg)
    FocalCheckpointer(src, str(tmp_path)).save("model_0000009", iteration=9)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    dst = build_model(cfg)
    extra = FocalCheckpointer(dst, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 9
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k])


def test_legitimate_pkl_loads_and_malicious_pickles_are_refused(tmp_path):
    cfg = get_tiny_cfg()
    src = build_model(cfg)
    good = tmp_path / "good.pkl"
    with open(good, "wb") as f:
        pickle.dump({"model": numpy_state(src), "__author__": "test"}, f)
    assert isinstance(load_pkl_safely(str(good))["model"]["head.cls_score.bias"], np.ndarray)
    FocalCheckpointer(build_model(cfg)).load(str(good))

    marker = tmp_path / "pwned"
    for name in ("evil.pkl", "evil.pth"):
        path = tmp_path / name
        payload = {"model": {"w": CodeOnLoad(str(marker))}, "__author__": "x"}
        with open(path, "wb") as f:
            if name.endswith(".pth"):
                torch.save(payload, f)
            else:
                pickle.dump(payload, f)
        with pytest.raises(UnsafeCheckpointError, match=name):
            FocalCheckpointer(build_model(cfg)).load(str(path))
        assert not marker.exists(), f"loading {name} ran code"


SAVER = r"""
import sys, torch
from focal_det.checkpoint import FocalCheckpointer
model = torch.nn.Linear(512, 512)
ckpt = FocalCheckpointer(model, {out!r})
i = 0
while True:
    with torch.no_grad():
        model.weight.fill_(float(i))
    ckpt.save(f"model_{{i % 3}}", iteration=i, blob=torch.full((2_000_000,), float(i)))
    print(i, flush=True)
    i += 1
"""


@pytest.mark.slow
def test_sigkill_during_saves_leaves_a_loadable_last_checkpoint(tmp_path):
    script = SAVER.format(repo=REPO, out=str(tmp_path))
    for delay in (0.0, 0.05, 0.13, 0.31):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        timer = threading.Timer(300, proc.kill)  # a hung child cannot hang the suite
        timer.start()
        first = proc.stdout.readline()
        timer.cancel()
        assert first.strip().isdigit(), f"the saver failed:\n{first}{proc.stdout.read()}"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        model = torch.nn.Linear(512, 512)
        extra = FocalCheckpointer(model, str(tmp_path)).resume_or_load("", resume=True)
        i = extra["iteration"]
        assert torch.equal(model.weight, torch.full_like(model.weight, float(i)))
        assert torch.equal(extra["blob"], torch.full((2_000_000,), float(i)))


def _renamed_checkpoint(tmp_path):
    """A .pth whose keys lack the 'backbone.' prefix: loadable only by name matching."""
    cfg = get_tiny_cfg()
    torch.manual_seed(1)
    src = build_model(cfg)
    state = {k[len("backbone."):] if k.startswith("backbone.") else k: v
             for k, v in src.state_dict().items()}
    path = tmp_path / "renamed.pth"
    torch.save({"model": state}, path)
    key = "backbone.bottom_up.stem.conv1.weight"
    return cfg, str(path), key, src.state_dict()[key]


def test_matching_heuristics_query_loads_by_name_matching(tmp_path):
    cfg, path, key, expected = _renamed_checkpoint(tmp_path)
    torch.manual_seed(2)
    plain = build_model(cfg)
    FocalCheckpointer(plain).load(path)  # exact names: the renamed keys do not load
    assert not torch.equal(plain.state_dict()[key], expected)
    torch.manual_seed(2)
    matched = build_model(cfg)
    FocalCheckpointer(matched).load(path + "?matching_heuristics=True")
    assert torch.equal(matched.state_dict()[key], expected)


@pytest.mark.parametrize("query,match", [("bogus=1", "unsupported query 'bogus'"),
                                         ("matching_heuristics=yes", "must be one of")])
def test_unknown_or_bad_query_is_refused_before_reading(tmp_path, query, match):
    cfg = get_tiny_cfg()
    model = build_model(cfg)
    missing = str(tmp_path / "does_not_exist.pth")  # not read: the query fails first
    with pytest.raises(ValueError, match=match):
        FocalCheckpointer(model).load(f"{missing}?{query}")


def test_pycls_pyth_loads_as_detectron2_loads_it_and_safely(tmp_path):
    """A pycls checkpoint ({"model_state": ...}, Detectron2 reads .pyth as pycls) loads by name
    matching; one holding code is refused like any other file."""
    cfg = get_tiny_cfg()
    torch.manual_seed(3)
    src = build_model(cfg)
    path = tmp_path / "pycls.pyth"
    torch.save({"model_state": src.state_dict(), "epoch": 7, "cfg": "MODEL:\n  TYPE: resnet\n"},
               path)
    torch.manual_seed(4)
    dst = build_model(cfg)
    checkpointer = FocalCheckpointer(dst)
    before = dict(vars(checkpointer))
    extra = checkpointer.load(str(path))
    assert extra["__author__"] == "pycls"
    for k, v in src.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(v, dst.state_dict()[k]), k
    assert vars(checkpointer) == before  # nothing of this load is kept for the next

    torch.save({"weights": src.state_dict()}, tmp_path / "not_pycls.pyth")
    with pytest.raises(ValueError, match="model_state"):
        FocalCheckpointer(build_model(cfg)).load(str(tmp_path / "not_pycls.pyth"))
    marker = tmp_path / "pwned"
    torch.save({"model_state": {"w": CodeOnLoad(str(marker))}}, tmp_path / "evil.pyth")
    with pytest.raises(UnsafeCheckpointError, match="evil.pyth"):
        FocalCheckpointer(build_model(cfg)).load(str(tmp_path / "evil.pyth"))
    assert not marker.exists()


def test_the_model_hook_is_all_the_checkpointer_knows_of_the_model(tmp_path):
    """A model without a checkpoint hook saves and loads plain weights; one with a hook has its
    metadata saved and its check run on load."""
    plain = torch.nn.Linear(3, 2)
    FocalCheckpointer(plain, str(tmp_path)).save("plain")
    assert set(torch.load(tmp_path / "plain.pth", weights_only=True)) == {"model"}

    class Hooked(torch.nn.Linear):
        def checkpoint_hook(self):
            return self

        def checkpoint_metadata(self):
            return {"layout": {"outputs": self.out_features}}

        def check_checkpoint(self, checkpoint, *, source, same_classes):
            if same_classes and checkpoint["layout"]["outputs"] != self.out_features:
                raise ValueError(f"{source}: other outputs")

    FocalCheckpointer(Hooked(3, 2), str(tmp_path)).save("hooked", iteration=1)
    saved = torch.load(tmp_path / "hooked.pth", weights_only=True)
    assert saved["layout"] == {"outputs": 2} and saved["iteration"] == 1
    FocalCheckpointer(Hooked(3, 2), require_same_classes=True).load(str(tmp_path / "hooked.pth"))
    with pytest.raises(ValueError, match="hooked.pth: other outputs"):
        FocalCheckpointer(Hooked(3, 5), require_same_classes=True).load(
            str(tmp_path / "hooked.pth"))
