"""Prediction from a bundle (the bundle itself: ``privmed.bundle``), calibration, explanation."""
from privmed.inference.predictor import Model, Prediction, load_model

__all__ = ["Model", "Prediction", "load_model"]
