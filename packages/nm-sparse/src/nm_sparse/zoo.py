"""The model zoo (now :mod:`slimkit.zoo`, shared with arbitrary-quant), re-exported under its 0.2 import path.

``SmallResNet`` (:mod:`slimkit.zoo`, shared with arbitrary-quant) is a CIFAR-style ResNet shrunk
to 8x8 (or upsampled) digit images. Its 3x3 convs are each followed by a BatchNorm, so SpRe has
something to re-parameterize, and its channel counts are multiples of 16, so every pattern up to
1:16 fits the input-channel layout. The stem conv (1 input channel) and the classifier are the layers the configs keep
dense by default (``keep_first_dense``/``keep_last_dense``). Other names go to
:func:`slimkit.models.create_model` (random weights, never a download).
"""

from __future__ import annotations

from slimkit.zoo import BUILTIN_MODELS, BasicBlock, SmallResNet, load_model

__all__ = ["BUILTIN_MODELS", "BasicBlock", "SmallResNet", "load_model"]
