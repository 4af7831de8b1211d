"""Placeholder until this operation is implemented."""


def fill_holes_and_remove_small_masks(*args, **kwargs):
    raise NotImplementedError('fill_holes_and_remove_small_masks')

