"""vlbench: controlled, per-stage runtime comparison of vision-language pretraining models.

The harness (this package) times models from ``architectures`` built on embedders from
``feature_extractors``; it sees a model only through its named stages.
"""

__version__ = "0.1.0"
