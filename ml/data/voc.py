"""PASCAL VOC 2012 class names; label i (1-based) is VOC_CLASSES[i - 1], 0 is background."""

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "dining table",
    "dog",
    "horse",
    "motorbike",
    "person",
    "potted plant",
    "sheep",
    "sofa",
    "train",
    "tv monitor",
)


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


_LABEL_BY_KEY = {_key(name): label for label, name in enumerate(VOC_CLASSES, start=1)}


def voc_label(name: str) -> int | None:
    """1-based label of a VOC class name, or None; the XML spellings ("diningtable", "tvmonitor") match too."""
    return _LABEL_BY_KEY.get(_key(name))
