"""Print the environment focal_det runs in (``make env``): like Detectron2's collect_env."""
import importlib
import importlib.metadata
import os
import sys


def _version(name: str, dist: str = None) -> str:
    try:
        mod = importlib.import_module(name)
    except Exception as e:  # report, do not hide, what is broken
        return f"not importable ({type(e).__name__}: {e})"
    version = getattr(mod, "__version__", None)
    if version is None:  # e.g. pycocotools has no __version__
        try:
            version = importlib.metadata.version(dist or name)
        except importlib.metadata.PackageNotFoundError:
            version = "?"
    return f"{version} @{os.path.dirname(mod.__file__)}"


def collect_env_info() -> str:
    import torch

    import focal_det
    from focal_det import kernels
    from focal_det._detectron2 import has_real_extension
    from focal_det.evaluation import cocoeval_in_use

    rows = [
        ("Python", sys.version.split()[0]),
        ("focal_det", f"{focal_det.__version__} @{os.path.dirname(focal_det.__file__)}"),
        ("torch", _version("torch")),
        ("torchvision", _version("torchvision")),
        ("detectron2", _version("detectron2")),
        ("detectron2._C", "compiled extension" if has_real_extension()
         else "absent: focal_det stand-in (rotated boxes, deformable conv, fast COCO eval "
              "unavailable; RetinaNet unaffected)"),
        ("fvcore", _version("fvcore")),
        ("pycocotools", _version("pycocotools")),
        ("faster_coco_eval", _version("faster_coco_eval", "faster-coco-eval")),
        ("COCO evaluation", cocoeval_in_use()),
        ("numpy", _version("numpy")),
        ("PIL", _version("PIL")),
        ("cv2", _version("cv2")),
        ("triton", _version("triton")),
        ("focal_det._C", "built (fused CPU loss)" if kernels.native_available()
         else "not built: the CPU loss uses plain PyTorch ops (slower; reinstall with a C++ "
              "compiler)"),
        ("loss backend", f"cpu: {kernels.select_backend(torch.device('cpu'))}, cuda: "
                         f"{'triton' if kernels.triton_loss.available() else 'reference'}"),
        ("CUDA available", str(torch.cuda.is_available())),
        ("GPU", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"),
        ("torch threads", str(torch.get_num_threads())),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


if __name__ == "__main__":
    print(collect_env_info())
