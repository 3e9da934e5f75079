"""Measuring speed (``tools/benchmark.py``): the top floor of the package, beside the tools.

* :mod:`~detres.benchmark.core`: timers (median and quartiles, A B A B alternation), peak
  memory, synthetic inputs, the timed closures, detection agreement;
* :mod:`~detres.benchmark.reference`: torchvision's ``fasterrcnn_resnet50_fpn`` set up like a
  detres config, with the same weights in both;
* :mod:`~detres.benchmark.suite`: one function per figure the tool prints.
"""
