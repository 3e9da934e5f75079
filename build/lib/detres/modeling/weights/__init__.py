"""Weights: reading files, mapping keys, the loading policy and class metadata, in one place.

* :mod:`~detres.modeling.weights.core`: :func:`read_weights`, :func:`load_weights` (policies
  ``strict`` / ``trunk`` / ``partial``), :class:`WeightsError`;
* :mod:`~detres.modeling.weights.hub`: :func:`resolve_weights` (names and URLs such as
  ``torchvision://resnet50`` or ``detectron2://ImageNetPretrained/MSRA/R-101.pkl``,
  downloaded once into torch's hub cache and converted), :func:`load_pretrained` (the
  config's weights into a built model);
* :mod:`~detres.modeling.weights.torchvision`: torchvision's ``fasterrcnn_resnet50_fpn``
  weights as a detres checkpoint.
"""

from detres.modeling.weights.core import (
    POLICIES,
    LoadReport,
    Weights,
    WeightsError,
    load_model_state,
    load_weights,
    read_weights,
    weights_from_dict,
)
from detres.modeling.weights.hub import load_pretrained, resolve_weights

__all__ = [
    "POLICIES", "LoadReport", "Weights", "WeightsError", "load_model_state", "load_pretrained",
    "load_weights", "read_weights", "resolve_weights", "weights_from_dict",
]
