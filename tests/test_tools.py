"""Tools and the environment: loss figures are rendered, the installer's stand-in for
detectron2._C fails loudly and clearly, the environment report names what is installed."""
import os
import sys

import pytest
import torch

from tests.common import CONFIGS, REPO, load_script, run_child


def test_plot_losses_writes_the_three_figures(tmp_path):
    plot_losses = load_script("tools/plot_losses.py")

    plot_losses.main(["--output", str(tmp_path)])
    names = {"figure1_focal_loss.png", "appendix_a_fl_star.png", "appendix_b_derivatives.png"}
    assert set(os.listdir(tmp_path)) == names
    for n in names:
        with open(tmp_path / n, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(tmp_path / n) > 10_000


def _stub_in_use():
    from focal_det._detectron2 import has_real_extension

    return not has_real_extension()


def test_missing_cpp_ops_raise_a_clear_error():
    if not _stub_in_use():
        pytest.skip("this Detectron2 has a compiled _C: the ops exist, nothing to refuse")
    from detectron2 import _C
    from detectron2.layers import nms_rotated
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    with pytest.raises(_C.MissingDetectron2Extension, match="nms_rotated.*build Detectron2"):
        nms_rotated(torch.rand(3, 5), torch.rand(3), 0.5)
    with pytest.raises(_C.MissingDetectron2Extension, match="box_iou_rotated"):
        pairwise_iou_rotated(torch.rand(2, 5), torch.rand(2, 5))
    with pytest.raises(AttributeError):  # dunder lookups keep normal semantics
        _C.__wrapped__


def test_detectron2_export_imports_without_caffe2():
    from detectron2.export import TracingAdapter  # noqa: F401


@pytest.mark.slow
def test_collect_env_reports_versions_and_extension():
    out = run_child([sys.executable, "-m", "focal_det.collect_env"], timeout=300).stdout
    for key in ("torch", "torchvision", "detectron2", "detectron2._C", "CUDA available"):
        assert key in out
    assert ("stand-in" in out) == _stub_in_use()


def test_get_cfg_adds_keys_without_touching_detectron2_defaults():
    from detectron2.config import get_cfg as d2_get_cfg

    import focal_det

    cfg = focal_det.get_cfg()
    assert cfg.MODEL.FOCAL_DET.CLS_LOSS.NAME == "FocalLoss"
    assert "FOCAL_DET" not in d2_get_cfg().MODEL


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine gpu-check runs for real")
def test_gpu_check_without_cuda_says_so_and_exits_2(tmp_path):
    proc = run_child(["bash", "tools/gpu_check.sh"], timeout=120, check=False,
                     env={**os.environ, "PYTHON": sys.executable,
                          "GPU_CHECK_OUT": str(tmp_path)})
    assert proc.returncode == 2, proc.stdout
    assert "no CUDA device" in proc.stdout and "False" in proc.stdout


def test_run_tool_makes_a_users_mistake_one_line():
    from focal_det import cli
    from focal_det.errors import FocalDetError

    def main(argv):
        if argv:
            raise FocalDetError(f"--flag {argv[0]!r} is wrong")
        return "done"

    assert cli.run_tool(main, "x.py", []) == "done"
    with pytest.raises(SystemExit) as e:
        cli.run_tool(main, "x.py", ["bad"])
    assert e.value.code == "x.py: --flag 'bad' is wrong"  # exit status 1, no traceback
    with pytest.raises(ValueError):  # a bug is not the user's mistake: it keeps its traceback
        cli.run_tool(lambda argv: int("x"), "x.py", [])


def test_every_tool_and_benchmark_runs_through_the_one_wrapper():
    checked = []
    for folder, prefix in (("tools", ""), ("benchmarks", "bench_")):
        for name in sorted(os.listdir(os.path.join(REPO, folder))):
            if (not name.endswith(".py") or not name.startswith(prefix)
                    or name == "install_detectron2.py"):  # runs before focal_det can be imported
                continue
            with open(os.path.join(REPO, folder, name)) as f:
                main_block = f.read().split('if __name__ == "__main__":')[1]
            assert main_block.strip() == f'cli.run_tool(main, "{name}")', name
            checked.append(name)
    assert {"bench_model.py", "bench_amp.py", "bench_losses.py", "bench_scales.py",
            "ablate.py"} <= set(checked)


# The analysis tools read .py configs (tests/test_lazy_analysis.py); these two stay .yaml-only:
# ablate's grids are .yaml key overrides, pretrain_backbone builds its classifier from
# MODEL.RESNETS.
@pytest.mark.parametrize("tool", ["ablate", "pretrain_backbone"])
def test_yaml_only_tools_refuse_a_py_config_naming_the_flag(tool, tmp_path):
    from focal_det.cli import ConfigFileError

    lazy = os.path.join(CONFIGS, "lazy", "retinanet_R18_shapes.py")
    argv = ["--output", str(tmp_path)]
    with pytest.raises(ConfigFileError, match="--config-file .*LazyConfig .py config: this "
                                              "command does not read"):
        load_script(f"tools/{tool}.py").main(["--config-file", lazy, *argv])
    assert os.listdir(tmp_path) == []  # refused before any work


@pytest.mark.slow
def test_a_tool_says_a_users_mistake_in_one_line():
    lazy = os.path.join(CONFIGS, "lazy", "retinanet_R18_shapes.py")
    proc = run_child([sys.executable, "tools/imbalance.py", "--config-file", lazy,
                      "train.max_iter", "5"], timeout=300, check=False)
    assert proc.returncode == 1
    assert proc.stdout.strip().splitlines()[-1] == (
        f"imbalance.py: {lazy}: overrides of a .py config are key=value, not 'train.max_iter'")
    assert "Traceback" not in proc.stdout


def test_the_config_comment_names_every_registered_loss():
    import inspect

    from focal_det import config
    from focal_det.losses import CLS_LOSS_REGISTRY

    source = inspect.getsource(config.add_focal_det_config)
    comment = source[source.index("# Registered name"):source.index("CLS_LOSS.NAME =")]
    for name, _ in CLS_LOSS_REGISTRY:
        assert name in comment, name
