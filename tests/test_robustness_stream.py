"""``evaluation.robustness`` streams the test split instead of holding it at native resolution."""
from __future__ import annotations

import weakref

import privmed.data.datasets as datasets
from privmed.evaluation.robustness import robustness


def test_robustness_holds_one_batch_and_results_do_not_depend_on_it(small_bundle, data_root, monkeypatch):
    """Before: every test image was decoded at native resolution and kept for the whole run."""
    real, alive, peak = datasets.load_record, [0], [0]

    def counted(record):
        img = real(record)
        alive[0] += 1
        peak[0] = max(peak[0], alive[0])
        weakref.finalize(img.pixels, lambda: alive.__setitem__(0, alive[0] - 1))
        return img

    monkeypatch.setattr(datasets, "load_record", counted)
    kw = dict(data_root=data_root, max_images=16, kinds=["gaussian_noise"])
    small = robustness(small_bundle, batch=4, **kw)
    assert peak[0] <= 4, peak[0]
    whole = robustness(small_bundle, batch=64, **kw)
    assert small["n"] == 16 and small == whole
