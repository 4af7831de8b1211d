"""Placeholder until this operation is implemented."""


def compute_masks(*args, **kwargs):
    raise NotImplementedError('compute_masks')

