"""The ground floor: helpers every other part of detres may use and that use nothing of detres.

* :mod:`~detres.utils.dist` -- torchrun / DDP helpers (world size 1 without a process group);
* :mod:`~detres.utils.io` -- safe checkpoint reading, atomic writes, RNG state, generated
  directories written once under a lock;
* :mod:`~detres.utils.device` -- device and precision (autocast) choice;
* :mod:`~detres.utils.logging` -- the ``detres`` logger, JSON-lines metrics, curve plots.
"""
