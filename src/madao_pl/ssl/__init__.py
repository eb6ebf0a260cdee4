"""Self-supervised MADAO (``task=ssl``, paper Table 3): MoCo v2 pre-training with a learned augmentation
policy, evaluated by a linear probe. Imports lightly, which only this task needs."""

from madao_pl.ssl.moco import MoCo, info_nce, without_classifier
from madao_pl.ssl.module import MoCoModule
from madao_pl.ssl.probe import LinearProbe

__all__ = ["LinearProbe", "MoCo", "MoCoModule", "info_nce", "without_classifier"]
