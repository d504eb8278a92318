def multibox_loss(*args, **kwargs):
    raise NotImplementedError
