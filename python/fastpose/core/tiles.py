"""Placeholder until this operation is implemented."""


def TileGrid(*args, **kwargs):
    raise NotImplementedError('TileGrid')


def make_tiles(*args, **kwargs):
    raise NotImplementedError('make_tiles')


def blend_tiles(*args, **kwargs):
    raise NotImplementedError('blend_tiles')

