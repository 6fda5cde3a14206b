"""Is a config's learning rate stable for its loss, data and model? λmax of the training loss's
Hessian (:mod:`.sharpness`, Lanczos in :mod:`.lanczos`), the detector's side (:mod:`.probe`),
the check (:mod:`.check`: λmax per part and group at init and after a dry run, the LR bound,
an LR range test), its verdict (:mod:`.verdict`) and command (:mod:`.command`:
``python -m focal_det.stability``, ``train_net.py --check-stability``)."""
from .lanczos import Spectrum, top_eigenvalue
from .sharpness import lambda_max, lr_bound

__all__ = ["Spectrum", "top_eigenvalue", "lambda_max", "lr_bound"]
