"""``python -m retinaface_ext train``: argument parsing and entry point."""
import argparse

from .trainer import BACKBONE_DEFAULTS, TrainConfig


def add_train_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--data", default="synthetic",
                        help="a WIDER FACE label.txt (retinaface_gt format; images in the 'images' folder next "
                             "to it), or 'synthetic' for the generated set (no download)")
    parser.add_argument("--images-dir", default=None, help="images folder (default: next to label.txt)")
    parser.add_argument("--backbone", default="mobilenet0.25", help="mobilenet0.25 or resnet50")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per process (default: biubug6's, " + ", ".join(
                            f"{k} {v['batch_size']}" for k, v in BACKBONE_DEFAULTS.items()) + ")")
    parser.add_argument("--epochs", type=int, default=None, help="default: biubug6's (250 / 100)")
    parser.add_argument("--decay-epochs", type=int, nargs=2, default=None,
                        help="epochs at which the lr is multiplied by gamma (default 190 220 / 70 90)")
    parser.add_argument("--image-size", type=int, default=None, help="training crop size (640 / 840)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--gamma", type=float, default=0.1)
    parser.add_argument("--warmup-epochs", type=float, default=0.0)
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader worker processes (default: 4, or the number of CPUs when fewer)")
    parser.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off",
                        help="mixed precision (fp16 uses a GradScaler)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--resume", default=None, help="a checkpoint (e.g. OUT/last.pt) or 'auto'")
    parser.add_argument("--pretrained", default=None,
                        help="initial weights: a .pth / .onnx file, a checkpoint such as OUT/last.pt, or "
                             "'pretrained' (= 'mobilenet0.25') for the bundled mobilenet0.25")
    parser.add_argument("--batchnorm", choices=("auto", "train", "frozen"), default="auto",
                        help="BatchNorm during training: 'frozen' keeps its statistics and affine fixed, as "
                             "torchvision's detection backbones do; 'auto' (default) freezes it when the initial "
                             "weights have BatchNorm folded into the convs (the bundled pretrained model, ONNX "
                             "exports), where training it would destroy the detector")
    parser.add_argument("--start-epoch", type=int, default=0,
                        help="start the lr schedule at this epoch (biubug6's --resume_epoch; use with --pretrained)")
    parser.add_argument("--out", default="runs/retinaface", help="checkpoints and logs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available)")
    parser.add_argument("--tensorboard", action="store_true", help="write TensorBoard scalars to OUT/tensorboard")
    parser.add_argument("--synthetic-size", type=int, default=1024, help="images in the synthetic set")
    parser.add_argument("--conf-loss", choices=("ce", "focal"), default="ce",
                        help="class loss: 'ce' (biubug6: cross-entropy with hard negative mining) or 'focal' "
                             "(RetinaNet: focal loss over all priors / #positives, class heads initialised "
                             "to P(face) = 0.01 unless --pretrained)")
    parser.add_argument("--focal-alpha", type=float, default=TrainConfig.focal_alpha,
                        help="focal loss weight of the face class (background: 1 - alpha)")
    parser.add_argument("--focal-gamma", type=float, default=TrainConfig.focal_gamma,
                        help="focal loss focusing parameter")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (checkpointed)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return parser


def config_from_args(args) -> TrainConfig:
    return TrainConfig(
        data=args.data, images_dir=args.images_dir, backbone=args.backbone, batch_size=args.batch_size,
        epochs=args.epochs, decay_epochs=tuple(args.decay_epochs) if args.decay_epochs else None,
        image_size=args.image_size, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
        gamma=args.gamma, warmup_epochs=args.warmup_epochs, workers=args.workers, amp=args.amp,
        channels_last=args.channels_last, out=args.out, resume=args.resume, seed=args.seed,
        device=args.device, tensorboard=args.tensorboard, progress=not args.no_progress,
        synthetic_size=args.synthetic_size, max_steps=args.max_steps, pretrained=args.pretrained,
        start_epoch=args.start_epoch, conf_loss=args.conf_loss, focal_alpha=args.focal_alpha,
        focal_gamma=args.focal_gamma, batchnorm=getattr(args, "batchnorm", "auto"))


def run_train(args) -> int:
    import sys

    from .trainer import TrainingDiverged, train

    try:
        outcome = train(config_from_args(args))
    except TrainingDiverged as error:
        print(f"retinaface-ext train: {error}", file=sys.stderr)
        return 1
    if outcome == "interrupted":
        print(f"interrupted: checkpoint written to {args.out}/last.pt (continue with --resume {args.out}/last.pt)")
        return 130
    return 0


def main(argv=None):
    parser = add_train_arguments(argparse.ArgumentParser(description="Train RetinaFace with the fused loss"))
    return run_train(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
