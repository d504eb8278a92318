"""biubug6's training data pipeline (data/wider_face.py WiderFaceDetection, data/data_augment.py
preproc), rewritten from its semantics (not copied) for the data benchmarks.

It keeps what sets its cost: cv2.imread per sample, the label.txt parsed into
Python lists, a per-face loop building the [n, 15] annotations, the crop
search with numpy, ``_distort`` on the crop in numpy float64 with two
cv2.cvtColor calls, the mean-colour pad, the mirror view, cv2.resize with a
random one of five interpolations, float32 conversion, mean subtraction and
the HWC -> CHW transpose; Python's ``random`` supplies the draws, as there.
"""
import random

import cv2
import numpy as np
import torch

INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_NEAREST, cv2.INTER_LANCZOS4)


def matrix_iof(a, b):
    lt = np.maximum(a[:, np.newaxis, :2], b[:, :2])
    rb = np.minimum(a[:, np.newaxis, 2:], b[:, 2:])
    area_i = np.prod(rb - lt, axis=2) * (lt < rb).all(axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    return area_i / np.maximum(area_a[:, np.newaxis], 1)


def crop(image, boxes, labels, landm, img_dim):
    height, width, _ = image.shape
    short_side = min(width, height)
    for _ in range(250):
        scale = 1.0 if random.uniform(0, 1) <= 0.2 else random.uniform(0.3, 1.0)
        w = h = int(scale * short_side)
        left = 0 if width == w else random.randrange(width - w)
        top = 0 if height == h else random.randrange(height - h)
        roi = np.array((left, top, left + w, top + h))
        if not (matrix_iof(boxes, roi[np.newaxis]) >= 1).any():
            continue
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2
        mask = np.logical_and(roi[:2] < centers, centers < roi[2:]).all(axis=1)
        boxes_t, labels_t = boxes[mask].copy(), labels[mask].copy()
        landms_t = landm[mask].copy().reshape([-1, 5, 2])
        if boxes_t.shape[0] == 0:
            continue
        image_t = image[roi[1]:roi[3], roi[0]:roi[2]]
        boxes_t[:, :2] = np.maximum(boxes_t[:, :2], roi[:2]) - roi[:2]
        boxes_t[:, 2:] = np.minimum(boxes_t[:, 2:], roi[2:]) - roi[:2]
        landms_t = np.minimum(np.maximum(landms_t - roi[:2], np.array([0, 0])), roi[2:] - roi[:2]).reshape([-1, 10])
        b_w = (boxes_t[:, 2] - boxes_t[:, 0] + 1) / w * img_dim
        b_h = (boxes_t[:, 3] - boxes_t[:, 1] + 1) / h * img_dim
        keep = np.minimum(b_w, b_h) > 0.0
        if not keep.any():
            continue
        return image_t, boxes_t[keep], labels_t[keep], landms_t[keep], False
    return image, boxes, labels, landm, True


def _convert(image, alpha=1, beta=0):
    tmp = image.astype(float) * alpha + beta
    tmp[tmp < 0] = 0
    tmp[tmp > 255] = 255
    image[:] = tmp


def distort(image):
    image = image.copy()
    contrast_first = random.randrange(2)
    if random.randrange(2):
        _convert(image, beta=random.uniform(-32, 32))
    if contrast_first and random.randrange(2):
        _convert(image, alpha=random.uniform(0.5, 1.5))
    image = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    if random.randrange(2):
        _convert(image[:, :, 1], alpha=random.uniform(0.5, 1.5))
    if random.randrange(2):
        tmp = image[:, :, 0].astype(int) + random.randint(-18, 18)
        image[:, :, 0] = tmp % 180
    image = cv2.cvtColor(image, cv2.COLOR_HSV2BGR)
    if not contrast_first and random.randrange(2):
        _convert(image, alpha=random.uniform(0.5, 1.5))
    return image


def mirror(image, boxes, landms):
    _, width, _ = image.shape
    if random.randrange(2):
        image = image[:, ::-1]
        boxes = boxes.copy()
        boxes[:, 0::2] = width - boxes[:, 2::-2]
        landms = landms.copy().reshape([-1, 5, 2])
        landms[:, :, 0] = width - landms[:, :, 0]
        landms = landms[:, [1, 0, 2, 4, 3]].reshape([-1, 10])
    return image, boxes, landms


def pad_to_square(image, rgb_mean, pad):
    if not pad:
        return image
    height, width, _ = image.shape
    side = max(width, height)
    square = np.empty((side, side, 3), dtype=image.dtype)
    square[:, :] = rgb_mean
    square[0:height, 0:width] = image
    return square


class preproc:
    def __init__(self, img_dim, rgb_means):
        self.img_dim = img_dim
        self.rgb_means = rgb_means

    def __call__(self, image, targets):
        boxes, labels, landm = targets[:, :4].copy(), targets[:, -1].copy(), targets[:, 4:-1].copy()
        image_t, boxes_t, labels_t, landm_t, pad = crop(image, boxes, labels, landm, self.img_dim)
        image_t = distort(image_t)
        image_t = pad_to_square(image_t, self.rgb_means, pad)
        image_t, boxes_t, landm_t = mirror(image_t, boxes_t, landm_t)
        height, width, _ = image_t.shape
        image_t = cv2.resize(image_t, (self.img_dim, self.img_dim), interpolation=INTERPOLATIONS[random.randrange(5)])
        image_t = (image_t.astype(np.float32) - self.rgb_means).transpose(2, 0, 1)
        boxes_t[:, 0::2] /= width
        boxes_t[:, 1::2] /= height
        landm_t[:, 0::2] /= width
        landm_t[:, 1::2] /= height
        return image_t, np.hstack((boxes_t, landm_t, labels_t[:, None]))


class WiderFaceDetection(torch.utils.data.Dataset):
    def __init__(self, txt_path, preproc=None):
        self.preproc = preproc
        self.imgs_path, self.words = [], []
        labels = None
        with open(txt_path) as f:
            for line in f.read().splitlines():
                if line.startswith("#"):
                    if labels is not None:
                        self.words.append(labels)
                    labels = []
                    self.imgs_path.append(txt_path.replace("label.txt", "images/") + line[2:])
                elif line.strip():
                    labels.append([float(x) for x in line.split(" ")])
        self.words.append(labels or [])

    def __len__(self):
        return len(self.imgs_path)

    def __getitem__(self, index):
        img = cv2.imread(self.imgs_path[index])
        annotations = np.zeros((0, 15))
        for label in self.words[index]:
            a = np.zeros((1, 15))
            a[0, :4] = label[0], label[1], label[0] + label[2], label[1] + label[3]
            a[0, 4:14] = [label[i] for i in (4, 5, 7, 8, 10, 11, 13, 14, 16, 17)]
            a[0, 14] = -1 if a[0, 4] < 0 else 1
            annotations = np.append(annotations, a, axis=0)
        target = np.array(annotations)
        if self.preproc is not None:
            img, target = self.preproc(img, target)
        return torch.from_numpy(img), target


def detection_collate(batch):
    images, targets = [], []
    for image, target in batch:
        images.append(image)
        targets.append(torch.from_numpy(target).float())
    return torch.stack(images, 0), targets
