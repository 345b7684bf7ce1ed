"""Grow seeds into your own GPT-style model on Python source (byte-level language model).

    python examples/grow_gpt_pystd.py               # about 2 minutes on 2 CPU cores
    python examples/grow_gpt_pystd.py --epochs 2 --samples 64 --data-dir FOLDER   # a smoke run

Data: the running Python's standard library (no download), or --data-dir, a folder of .py files.
"""

import argparse
import dataclasses

import torch
from torch import nn

from esper import inject_slots
from esper.tamiyo import HeuristicController
from esper.tolaria import Trainer, TrainerConfig
from esper.tolaria.pystd import load_pystd_data


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x):
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device)
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, is_causal=True, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int = 256, width: int = 64, layers: int = 2, context: int = 64):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(context, width)
        self.blocks = nn.Sequential(*(Block(width, heads=4) for _ in range(layers)))
        self.ln, self.head = nn.LayerNorm(width), nn.Linear(width, vocab, bias=False)

    def forward(self, idx):
        h = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        return self.head(self.ln(self.blocks(h)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--samples", type=int, default=2048, help="training windows per epoch")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--static", action="store_true", help="no growth: the baseline")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    data = load_pystd_data(args.data_dir, args.seed)
    model = inject_slots(GPT(), r"blocks\.\d+", example_input=data.train_x[:2])
    config = TrainerConfig(seed=args.seed, total_epochs=args.epochs, optimizer="adamw", lr=3e-3)
    config = dataclasses.replace(config, seed_lr=3e-3, batch_size=64, epoch_samples=args.samples)
    controller = None if args.static else HeuristicController(model.topology, seed=args.seed)
    trainer = Trainer(model, data, config, controller=controller)
    for _ in range(args.epochs):
        r = trainer.run_epoch()
        params = model.count_parameters()["total"]
        print(f"epoch {r.epoch:3d}  val loss {r.val_loss:.4f}  params {params:,}")
    loss, accuracy = trainer.evaluate("test")
    print(f"test loss {loss:.4f}  test accuracy {accuracy:.2f}%")
    for report in model.slot_reports():
        print(f"  {report.slot:10s} {report.stage.name:12s} {report.blueprint_id or ''}")


if __name__ == "__main__":
    main()
