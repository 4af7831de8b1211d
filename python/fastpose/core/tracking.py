"""Placeholder until this operation is implemented."""


def follow_flows(*args, **kwargs):
    raise NotImplementedError('follow_flows')

