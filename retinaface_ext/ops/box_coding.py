def encode(*args, **kwargs):
    raise NotImplementedError


def decode(*args, **kwargs):
    raise NotImplementedError


def encode_landmarks(*args, **kwargs):
    raise NotImplementedError


def decode_landmarks(*args, **kwargs):
    raise NotImplementedError
