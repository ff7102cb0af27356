"""What each dataset is: classes, channels, size, split sizes and its normalization statistics.

``mean`` and ``std`` are per channel over the training split's pixels, for
images scaled to [0, 1] (what ``transforms.normalize`` takes). They are the
values the community uses (e.g. torchvision examples): MNIST 0.1307 / 0.3081
(recomputed here from the real files), Fashion-MNIST 0.2860 / 0.3530, KMNIST
0.1918 / 0.3483, and for CIFAR the per-pixel population statistics (not the
0.2023-style std of per-image means some code copies).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DatasetError


@dataclass(frozen=True)
class DatasetInfo:
    """Facts about one dataset, for building a model and normalizing its inputs."""

    name: str
    num_classes: int
    in_channels: int
    image_size: tuple  # (H, W)
    mean: tuple  # one value per channel, for images in [0, 1]
    std: tuple
    train_size: int
    test_size: int
    class_names: tuple  # class_names[label] is the name of that label


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

#: CIFAR-100's fine labels (label_mode="fine"), in label order as in the archive's fine_label_names.txt.
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)

#: CIFAR-100's coarse labels (label_mode="coarse"), the 20 superclasses, as in coarse_label_names.txt.
CIFAR100_COARSE_CLASSES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2",
)

_INFOS = {
    info.name: info for info in (
        DatasetInfo("mnist", 10, 1, (28, 28), (0.1307,), (0.3081,), 60_000, 10_000,
                    tuple(str(digit) for digit in range(10))),
        DatasetInfo("fashion_mnist", 10, 1, (28, 28), (0.2860,), (0.3530,), 60_000, 10_000,
                    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                     "Ankle boot")),
        DatasetInfo("kmnist", 10, 1, (28, 28), (0.1918,), (0.3483,), 60_000, 10_000,
                    ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")),
        DatasetInfo("cifar10", 10, 3, (32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 50_000, 10_000,
                    CIFAR10_CLASSES),
        DatasetInfo("cifar100", 100, 3, (32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 50_000,
                    10_000, CIFAR100_CLASSES),
    )
}

#: The names ``load_dataset`` and ``dataset_info`` accept.
DATASETS = tuple(_INFOS)


#: Other spellings people write, after lower-casing and turning "-" into "_".
_ALIASES = {"fashionmnist": "fashion_mnist", "fmnist": "fashion_mnist", "k_mnist": "kmnist",
            "cifar_10": "cifar10", "cifar_100": "cifar100"}


def canonical_name(name) -> str:
    """``name`` as one of ``DATASETS`` ("Fashion-MNIST" and "cifar-10" too), or a ``DatasetError`` listing them."""
    if isinstance(name, str):
        key = name.strip().lower().replace("-", "_")
        key = _ALIASES.get(key, key)
        if key in _INFOS:
            return key
    raise DatasetError(f"unknown dataset {name!r}; known datasets are {', '.join(DATASETS)}")


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name`` (one of ``DATASETS``); CIFAR-100's is for its fine labels."""
    return _INFOS[canonical_name(name)]

