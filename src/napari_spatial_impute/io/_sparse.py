"""``scipy.sparse.issparse`` in a form type checkers can follow.

scipy-stubs types ``issparse(x)`` as ``TypeIs[SparseABC]``, an empty base class, so a checked
value loses the sparse API (``toarray``, ``multiply``, ``@``, ...) after the test. This helper
does the same test at run time and narrows to scipy's sparse base class instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import scipy.sparse as sp

if TYPE_CHECKING:
    from scipy.sparse._base import _spbase
    from typing_extensions import TypeIs

    #: Any 2-D scipy sparse matrix or array, for annotations (the stubs' ``spmatrix`` and
    #: ``sparray`` are mix-ins without the sparse API).
    SparseMatrix: TypeAlias = _spbase[Any, tuple[int, int]]


def is_sparse(x: object) -> TypeIs[SparseMatrix]:
    """Whether ``x`` is a scipy sparse matrix or array (``scipy.sparse.issparse``)."""
    return sp.issparse(x)
