"""Bundles, prediction, calibration, explanation."""
from privmed.inference.predictor import Model, Prediction, load_model

__all__ = ["Model", "Prediction", "load_model"]
