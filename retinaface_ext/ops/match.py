def match(*args, **kwargs):
    raise NotImplementedError
