"""The paper's CNN: conv -> GroupNorm -> ReLU -> pool blocks, dropout, fully connected layers.

GroupNorm (not BatchNorm) so that each sample's gradient depends on that sample alone, as
DP-SGD's per-sample clipping requires.
"""
from torch import nn


def conv_block(cin: int, cout: int, groups: int = 8) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(min(groups, cout), cout), nn.ReLU(), nn.MaxPool2d(2)
    )


class PaperCNN(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 1, widths=(16, 32, 64, 128), dropout: float = 0.3):
        super().__init__()
        layers, c = [], in_channels
        for w in widths:
            layers.append(conv_block(c, w))
            c = w
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(c, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))
