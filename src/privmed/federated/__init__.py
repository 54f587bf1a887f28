"""Federated training across hospitals on Flower: local DP-SGD inside each hospital (its own
ledger), weighted FedAvg of updates through SecAgg+, an ordinary bundle out.

Layer: above training/privacy, below the faces. ``privmed.federated.run`` imports Flower (the
``federated`` extra); ``privmed.cli.federated`` does not, so the CLI works without it."""
