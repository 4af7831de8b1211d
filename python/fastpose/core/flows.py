"""Placeholder until this operation is implemented."""


def masks_to_flows(*args, **kwargs):
    raise NotImplementedError('masks_to_flows')


def flow_errors(*args, **kwargs):
    raise NotImplementedError('flow_errors')


def remove_bad_flow_masks(*args, **kwargs):
    raise NotImplementedError('remove_bad_flow_masks')

