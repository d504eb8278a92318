"""biubug6's train.py flags, over retinaface-ext.

    python python/train.py --training_dataset ./data/widerface/train/label.txt --network mobile0.25

Training runs through retinaface_ext.training once that module exists (the
fused MultiBoxLoss is already in retinaface_ext); until then this script says
so and exits with status 2.
"""
import argparse
import sys

import _bootstrap  # noqa: F401


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Retinaface Training")
    parser.add_argument("--training_dataset", default="./data/widerface/train/label.txt", help="Training dataset directory")
    parser.add_argument("--network", default="mobile0.25", help="Backbone network mobile0.25 or resnet50")
    parser.add_argument("--num_workers", default=4, type=int, help="Number of workers used in dataloading")
    parser.add_argument("--lr", "--learning-rate", default=1e-3, type=float, help="initial learning rate")
    parser.add_argument("--momentum", default=0.9, type=float, help="momentum")
    parser.add_argument("--resume_net", default=None, help="resume net for retraining")
    parser.add_argument("--resume_epoch", default=0, type=int, help="resume iter for retraining")
    parser.add_argument("--weight_decay", default=5e-4, type=float, help="Weight decay for SGD")
    parser.add_argument("--gamma", default=0.1, type=float, help="Gamma update for SGD")
    parser.add_argument("--save_folder", default="./weights/", help="Location to save checkpoint models")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        from retinaface_ext import training
    except ImportError:
        print("retinaface-ext has no trainer yet (retinaface_ext.training); the model "
              "(retinaface_ext.RetinaFace) and the fused MultiBoxLoss are available to use in "
              "your own loop.", file=sys.stderr)
        return 2
    return training.main(args)


if __name__ == "__main__":
    sys.exit(main())
