def detect_postprocess(*args, **kwargs):
    raise NotImplementedError
