"""privmed: privacy-aware medical image analysis.

    import privmed
    model = privmed.load_model("chest_xray_pneumonia")   # a default bundle, or a bundle path
    print(model.predict("xray.jpeg").label)
"""
from privmed.data.read import load_image


def __getattr__(name: str):
    if name == "__version__":  # read on first use: importlib.metadata costs every `import privmed` otherwise
        from privmed.version import __version__

        return __version__
    raise AttributeError(f"module 'privmed' has no attribute '{name}'")


def load_model(name_or_path):
    """Load a model bundle (directory or default bundle name); see ``privmed.inference.Model``."""
    from privmed.inference import load_model as _load

    return _load(name_or_path)


def train(dataset: str = "chest_xray_pneumonia", out=None, **overrides):
    """Train a model (DP by default, epsilon=2) and write a bundle; returns the bundle path."""
    from privmed.pipeline import train_bundle

    return train_bundle(dataset=dataset, out=out, **overrides)


__all__ = ["__version__", "load_image", "load_model", "train"]
