"""biubug6's train.py flags, over retinaface-ext's trainer (fused MultiBox loss).

    python python/train.py --training_dataset ./data/widerface/train/label.txt --network mobile0.25

biubug6's flags keep their meaning: ``--resume_net`` loads weights only (as
there) and ``--resume_epoch`` starts the learning-rate schedule at that epoch;
the final weights are ``<save_folder>/mobilenet0.25_Final.pth`` (or
``Resnet50_Final.pth``). Batch size, epochs and image size come from biubug6's
cfg_mnet / cfg_re50. Any flag of ``python -m retinaface_ext train`` may follow
(``--amp bf16``, ``--channels-last``, ``--batch-size 64``, ``--resume auto``
for an exact resume from ``<save_folder>/last.pt`` ...); ``--training_dataset
synthetic`` trains on the generated faces (no download).
"""
import argparse
import sys

import _bootstrap  # noqa: F401


def biubug6_parser():
    parser = argparse.ArgumentParser(description="Retinaface Training", add_help=False)
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
    return parser


def parse_args(argv=None):
    """biubug6's flags first, then any of ``retinaface_ext train``'s; -> the trainer's argparse namespace."""
    from retinaface_ext.training.cli import add_train_arguments

    biubug6 = biubug6_parser()
    ours = add_train_arguments(argparse.ArgumentParser(
        prog="train.py", parents=[biubug6], conflict_handler="resolve",
        description="biubug6's train.py flags (listed first) plus retinaface-ext's trainer options"))
    args = ours.parse_args(argv)
    args.data = args.training_dataset
    args.backbone = args.network
    args.workers = args.num_workers
    args.pretrained = args.resume_net
    args.start_epoch = args.resume_epoch
    args.out = args.save_folder
    return args


def main(argv=None):
    from retinaface_ext.training.cli import run_train

    return run_train(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
