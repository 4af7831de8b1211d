"""Placeholder until this operation is implemented."""


def get_masks(*args, **kwargs):
    raise NotImplementedError('get_masks')

