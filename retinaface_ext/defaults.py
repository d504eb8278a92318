"""biubug6's configuration values, the defaults of every op (cfg_mnet / cfg_re50, MultiBoxLoss)."""
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCES = (0.1, 0.2)
MATCH_THRESHOLD = 0.35  # a prior with IoU below this is background
MIN_BEST_IOU = 0.2  # a face whose best prior has IoU below this is not forced onto it
NEG_POS_RATIO = 7
SCORE_THRESHOLD = 0.02
NMS_THRESHOLD = 0.4
PRE_NMS_TOP_K = 5000
MAX_DETECTIONS = 750

# conf_loss="focal" (not biubug6's: RetinaNet's values, Lin et al. 2017).
FOCAL_ALPHA = 0.25  # weight of the face class; the background gets 1 - alpha
FOCAL_GAMMA = 2.0
FOCAL_PRIOR_PROBABILITY = 0.01  # P(face) of every prior at initialisation

BGR_MEAN = (104.0, 117.0, 123.0)  # biubug6's per-channel mean (B, G, R) subtracted from every image
MOBILENET_LEAKY = 0.1  # LeakyReLU slope of biubug6's MobileNetV1-0.25
