"""Ready-made networks, and the registry that lets a checkpoint rebuild any model.

Every zoo model takes ``seed`` (weights drawn on the host from
``numpy.random.default_rng(seed)``, so they are bit-identical on every
backend), ``num_classes``, ``in_channels``, ``dtype`` and ``device``.
:func:`register` adds a user's own architecture (see ``_registry``).
"""

from ._registry import architecture_of, available, create, recipe_of, register
from . import lenets as _lenets
from . import mobilenets as _mobilenets
from . import resnets as _resnets
from . import vggs as _vggs

# LeNet's recipes are the training presets ("fast", the default, and "seed"): see portacnn.training.PRESETS.
lenet = register("lenet", _lenets.lenet)

#: The batch-normalised zoo's default recipe, sized for MNIST-like data on a CPU (a few epochs): SGD with
#: momentum, a one-epoch warm-up into a cosine decay, random crops, per-channel normalisation.
#: For CIFAR pass more epochs (the ResNet paper trains for about 160).
_BN_RECIPE = dict(epochs=5, batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4, scheduler="cosine", warmup=1,
                  augment=True, normalize=True)
#: ResNet-8's: 7 epochs reach 0.994 on MNIST in under 15 minutes on 2 CPU cores (5 stop near 0.993).
_RESNET8_RECIPE = dict(_BN_RECIPE, epochs=7)

lenet5 = register("lenet5", _lenets.lenet5)
resnet8 = register("resnet8", _resnets.resnet8, recipe=_RESNET8_RECIPE)
resnet20 = register("resnet20", _resnets.resnet20, recipe=_BN_RECIPE)
resnet32 = register("resnet32", _resnets.resnet32, recipe=_BN_RECIPE)
vgg = register("vgg", _vggs.vgg, recipe=_BN_RECIPE)
mobilenet = register("mobilenet", _mobilenets.mobilenet, recipe=_BN_RECIPE)

__all__ = ["register", "create", "available", "architecture_of", "recipe_of", "lenet", "lenet5", "resnet8",
           "resnet20", "resnet32", "vgg", "mobilenet"]
