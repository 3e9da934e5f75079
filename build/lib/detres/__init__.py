"""detres: Faster R-CNN on ResNet and VGG-16 backbones, with the classification pretraining
of He et al., *Deep Residual Learning for Image Recognition* (2015)."""

__version__ = "0.1.0"
