"""Networks: the paper's CNN, EfficientNet-Lite0 (ImageNet weights, DP-ready), baselines."""
from privmed.models.registry import MODELS, ModelSpec, SplitModel, get_model, spec_of

__all__ = ["MODELS", "ModelSpec", "SplitModel", "get_model", "spec_of"]
