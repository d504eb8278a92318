def hard_negative_mask(*args, **kwargs):
    raise NotImplementedError
