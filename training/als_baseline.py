"""Implicit ALS retrieval baseline (``implicit.cpu.als.AlternatingLeastSquares``) on positive interactions.

Fit on the user x item CSR of likes (rating >= the like threshold) that happened before the test cut-off;
a user's score for a movie is the dot product of their factors. Fixed seed, so runs repeat.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from starling.errors import StarlingError


@dataclass(frozen=True)
class ALSConfig:
    factors: int = 64
    regularization: float = 0.05
    alpha: float = 1.0
    iterations: int = 15
    seed: int = 0


@dataclass
class ALSFactors:
    user_factors: np.ndarray  # float32 [users, factors]
    item_factors: np.ndarray  # float32 [items, factors]

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        """Scores of ``user_rows`` over every item: [len(user_rows), items]."""
        return self.user_factors[user_rows] @ self.item_factors.T


def fit_als(user_items: sp.csr_matrix, config: ALSConfig = ALSConfig()) -> ALSFactors:
    """Fit ALS on a [users x items] interaction matrix (non-zero = positive interaction)."""
    from implicit.cpu.als import AlternatingLeastSquares

    if user_items.nnz == 0:
        raise StarlingError("ALS: no positive interactions to fit on")
    matrix = sp.csr_matrix(user_items, dtype=np.float32)
    # implicit parallelizes itself and wants single-threaded BLAS (it checks, and warns, when built).
    with threadpool_limits(limits=1, user_api="blas"):
        model = AlternatingLeastSquares(
            factors=config.factors,
            regularization=config.regularization,
            alpha=config.alpha,
            iterations=config.iterations,
            random_state=config.seed,
        )
        model.fit(matrix, show_progress=False)
    return ALSFactors(
        np.asarray(model.user_factors, dtype=np.float32), np.asarray(model.item_factors, dtype=np.float32)
    )
