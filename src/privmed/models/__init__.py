"""Networks: the paper's CNN, EfficientNet-Lite0 (ImageNet weights, DP-ready), baselines."""
from privmed.models.registry import MODELS, SplitModel, get_model

__all__ = ["MODELS", "SplitModel", "get_model"]
