"""Shared test helpers: independent references (:mod:`helpers.references`) and test models.

Test files import them as ``from helpers.references import full_jacobian``: pytest's default
``prepend`` import mode puts ``tests/`` (a folder without ``__init__.py``) on ``sys.path``.
"""
