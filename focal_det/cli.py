"""What every focal_det command shares: the config (a ``.yaml`` or a LazyConfig ``.py``) from
``--config-file`` and overrides, ``--register-coco``, ``--output``, the line that regenerates a
report, writing the report, and running a command (:func:`run_tool`: a mistake in the user's
input is one line, no traceback).

``train_net.py``, ``demo.py``, ``tools/*`` and ``benchmarks/*`` build their parsers and configs
here, so a new command reads like the others and a fix lands everywhere at once.
"""
import argparse
import json
import os
import re
import shlex
import sys
from typing import Callable, List, Optional, Sequence, Union

from .data.register import register_coco_datasets
from .errors import FocalDetError
from .utils.files import atomic_write_text

__all__ = ["add_config_args", "add_register_coco", "add_output", "is_lazy_config",
           "check_config_file", "load_config", "load_run_config", "load_yaml_config",
           "regenerate_command", "parse_args",
           "write_report", "run_tool", "ConfigFileError", "YAML_ONLY", "register_coco_datasets"]


class ConfigFileError(FocalDetError, ValueError):
    pass


def add_config_args(parser: argparse.ArgumentParser, *, repeatable: bool = False,
                    opts: str = "positional", lazy: bool = True) -> None:
    """``--config-file`` (``repeatable``: several) and the overrides: ``opts="positional"``
    (Detectron2's ``KEY VALUE ...`` at the end) or ``"flag"`` (``--opts KEY VALUE ...``, the
    demo's interface). ``.yaml`` overrides are ``KEY VALUE`` pairs, ``.py`` ones ``key=value``.
    ``lazy=False``: the command reads ``.yaml`` configs only (:func:`load_yaml_config`)."""
    kinds = "a .yaml config or a LazyConfig .py config" if lazy else f"a .yaml config ({YAML_ONLY})"
    parser.add_argument("--config-file", metavar="FILE", required=True,
                        action="append" if repeatable else "store",
                        help=kinds + (" (repeatable)" if repeatable else ""))
    help_ = ("config overrides: KEY VALUE pairs (.yaml) or key=value (.py)" if lazy else
             "config overrides: KEY VALUE pairs")
    if opts == "flag":
        parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help=help_)
    else:
        parser.add_argument("opts", default=[], nargs=argparse.REMAINDER, help=help_)


_CONFIG_KEY = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)+")


def parse_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None):
    """``parser.parse_args(argv)`` for a parser whose positional ``opts`` take ``.yaml``
    overrides (``KEY VALUE ...`` at the end): the overrides start at the first token that is a
    config key (``SOLVER.BASE_LR``: a section of the config, then upper-case names after dots),
    so a list flag written just before them (``--seeds 0 1 SOLVER.BASE_LR 0.01``) ends there
    instead of swallowing them (and failing, or, for a list of names, reading the keys as
    names)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from .config import get_cfg

    sections = {k for k, v in get_cfg().items() if isinstance(v, dict)}
    cut = next((i for i, a in enumerate(argv) if _CONFIG_KEY.fullmatch(a)
                and a.split(".", 1)[0] in sections), len(argv))
    args = parser.parse_args(argv[:cut])
    if cut < len(argv):
        args.opts = list(args.opts or []) + argv[cut:]
    return args


def add_register_coco(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--register-coco", nargs=3, action="append",
                        metavar=("NAME", "JSON", "IMAGE_ROOT"),
                        help="register a COCO-format dataset under NAME (repeatable); then "
                             "use it in DATASETS.TRAIN / DATASETS.TEST")


def add_output(parser: argparse.ArgumentParser, default: Optional[str] = None,
               what: str = "the report") -> None:
    parser.add_argument("--output", default=default, metavar="DIR",
                        help=f"folder for {what}" + (f" (default {default})" if default else ""))


def is_lazy_config(path: str) -> bool:
    return path.endswith(".py")


YAML_ONLY = "this command does not read LazyConfig .py configs"


def check_config_file(path: str, *, lazy: bool = True) -> None:
    """``path`` exists and is a ``.yaml`` config or (``lazy``) a LazyConfig ``.py`` one; the
    message names ``--config-file``."""
    if not os.path.isfile(path):
        raise ConfigFileError(f"--config-file {path!r} does not exist")
    if is_lazy_config(path) and not lazy:
        raise ConfigFileError(f"--config-file {path!r} is a LazyConfig .py config: {YAML_ONLY}"
                              " (it reads the keys of a .yaml CfgNode); give a .yaml config")
    if not (path.endswith((".yaml", ".yml")) or is_lazy_config(path)):
        raise ConfigFileError(f"--config-file {path!r}: expected a .yaml or a LazyConfig .py file")


def load_yaml_config(path: str, opts: Sequence[str] = (), *, device: Optional[str] = None,
                     freeze: bool = True):
    """focal_det's defaults, then ``path`` (a ``.yaml`` file: a ``.py`` one is refused with a
    message naming ``--config-file``), then ``opts`` (``KEY VALUE`` pairs)."""
    from .config import get_cfg

    check_config_file(path, lazy=False)
    opts = list(opts)
    if len(opts) % 2:
        flags = [o for o in opts if o.startswith("--")]
        hint = f" ({flags[0]!r} is a flag: put flags before the overrides)" if flags else ""
        raise ConfigFileError(f"overrides must be KEY VALUE pairs; got {len(opts)} words, the "
                              f"last {opts[-1]!r} has no value{hint}")
    cfg = get_cfg()
    cfg.merge_from_file(path)
    try:
        cfg.merge_from_list(opts)
    except KeyError as e:  # yacs: "Non-existent config key: X"
        raise ConfigFileError(f"override {e.args[0] if e.args else e}") from None
    if device is not None:
        cfg.MODEL.DEVICE = device
    if freeze:
        cfg.freeze()
    return cfg


def load_config(path: str, opts: Sequence[str] = (), *, device: Optional[str] = None,
                freeze: bool = True):
    """A ``CfgNode`` for a ``.yaml`` file, a LazyConfig ``DictConfig`` for a ``.py`` one (its
    overrides as ``key=value``, e.g. ``model.cls_loss.gamma=1``)."""
    if not is_lazy_config(path):
        return load_yaml_config(path, opts, device=device, freeze=freeze)
    from detectron2.config import LazyConfig

    check_config_file(path)
    cfg = LazyConfig.load(path)
    bad = [o for o in opts if "=" not in o]
    if bad:
        raise ConfigFileError(f"{path}: overrides of a .py config are key=value, not {bad[0]!r}")
    cfg = LazyConfig.apply_overrides(cfg, list(opts))
    if device is not None:
        cfg.train.device = device
    return cfg


def load_run_config(path: str, opts: Sequence[str] = (), *, device: Optional[str] = None):
    """The config as the engine reads it, either kind, as ``train_net.py`` does: a ``.yaml``
    file's frozen ``CfgNode``, a ``.py`` file's :class:`focal_det.lazy_run.LazyRunConfig` view
    (the engine's keys, the LazyConfig as ``.lazy``). Build its model with
    ``focal_det.inference.inference_spec(cfg).build_model()``."""
    cfg = load_config(path, opts, device=device)
    if not is_lazy_config(path):
        return cfg
    from .lazy_run import run_config

    return run_config(cfg)


def regenerate_command(script: Union[str, Sequence[str]],
                       argv: Optional[List[str]] = None) -> str:
    """The shell line that reruns ``script`` (a path, or e.g. ``["-m", "benchmarks.x"]``) with
    ``argv`` (default: this process's), each argument quoted so that it pastes back into a
    shell unchanged."""
    args = sys.argv[1:] if argv is None else list(argv)
    program = [script] if isinstance(script, str) else list(script)
    return shlex.join(["python", *program, *args])


def write_report(folder: str, stem: str, data, title: str, command: str, table: str) -> None:
    """``folder/stem.json`` (``data``) and ``folder/stem.md`` (a title, the command that
    regenerates it, a markdown table), each written whole."""
    os.makedirs(folder, exist_ok=True)
    atomic_write_text(os.path.join(folder, f"{stem}.json"), json.dumps(data, indent=1))
    atomic_write_text(os.path.join(folder, f"{stem}.md"),
                      f"# {title}\n\nRegenerate: `{command}`\n\n{table}")


def run_tool(main: Callable[[Optional[List[str]]], object], prog: str,
             argv: Optional[List[str]] = None):
    """``main(argv)`` as a command (``argv`` None: this process's arguments): a
    :class:`FocalDetError` (the user's input is wrong) ends it with the one line
    ``prog: message`` on stderr and exit status 1, no traceback. Every entry point's
    ``__main__`` is ``cli.run_tool(main, "NAME.py")``."""
    try:
        return main(sys.argv[1:] if argv is None else list(argv))
    except FocalDetError as e:
        sys.exit(f"{prog}: {e}")
