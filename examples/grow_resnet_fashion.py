"""Grow seeds into your own ResNet-style CNN on Fashion-MNIST, under Esper's heuristic controller.

    python examples/grow_resnet_fashion.py            # about 2 minutes on 2 CPU cores
    python examples/grow_resnet_fashion.py --epochs 2 --samples 256 --data-dir DIR   # a smoke run

Data: Debian's dataset-fashion-mnist (`apt-get install dataset-fashion-mnist`), or --data-dir.
"""

import argparse

import torch
from torch import nn

from esper import inject_slots
from esper.tamiyo import HeuristicController
from esper.tolaria import Trainer, TrainerConfig
from esper.tolaria.fashion import load_fashion_data


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if stride > 1 else nn.Identity()

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.skip(x))


class ResNet(nn.Module):
    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        )
        self.layer1 = Block(width, width, 1)
        self.layer2 = Block(width, 2 * width, 2)
        self.layer3 = Block(2 * width, 4 * width, 2)
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x):
        h = self.layer3(self.layer2(self.layer1(torch.relu(self.stem(x)))))
        return self.fc(h.mean(dim=(2, 3)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--samples", type=int, default=8192, help="training images per epoch")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--static", action="store_true", help="no growth: the baseline")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    data = load_fashion_data(args.data_dir, args.seed)
    model = inject_slots(ResNet(), ["layer1", "layer2", "layer3"], example_input=data.train_x[:2])
    config = TrainerConfig(
        seed=args.seed, total_epochs=args.epochs, lr=0.05, seed_lr=0.05, epoch_samples=args.samples
    )
    controller = None if args.static else HeuristicController(model.topology, seed=args.seed)
    trainer = Trainer(model, data, config, controller=controller)
    for _ in range(args.epochs):
        r = trainer.run_epoch()
        params = model.count_parameters()["total"]
        print(f"epoch {r.epoch:3d}  val acc {r.val_accuracy:6.2f}%  params {params:,}")
    loss, accuracy = trainer.evaluate("test")
    print(f"test accuracy {accuracy:.2f}%  test loss {loss:.4f}")
    for report in model.slot_reports():
        print(f"  {report.slot:8s} {report.stage.name:12s} {report.blueprint_id or ''}")


if __name__ == "__main__":
    main()
