"""A learned tissue classifier: pixel features -> blood pool / myocardium / edema / scar.

- :mod:`~napari_gmmseg.classifier.features`: intensity, local-context and position features;
- :mod:`~napari_gmmseg.classifier.model`: the MLP and its ``.npz`` file (numbers only);
- :mod:`~napari_gmmseg.classifier.learn`: learning it from labelled cases
  (``napari-gmmseg classifier DATASET --out model.npz``);
- :mod:`~napari_gmmseg.classifier.pipeline`: the ``tissue-classifier`` method.

Unlike the mixtures it is supervised: the shipped model is learned on the 15 myops_dev cases,
and its quality is reported leave-one-case-out (``benchmarks/cv_quality.py``).
"""

from napari_gmmseg.classifier.features import FEATURE_NAMES, volume_features
from napari_gmmseg.classifier.learn import learn_classifier
from napari_gmmseg.classifier.model import TissueClassifier, default_classifier, load_classifier
from napari_gmmseg.classifier.pipeline import ClassifierOptions, fit_pipeline

__all__ = [
    "FEATURE_NAMES",
    "ClassifierOptions",
    "TissueClassifier",
    "default_classifier",
    "fit_pipeline",
    "learn_classifier",
    "load_classifier",
    "volume_features",
]
