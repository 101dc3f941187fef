import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin


def interaction_terms(X, pairs=((0, 2), (2, 8))):
    """Append the product of each pair of columns."""
    X = np.asarray(X, dtype=float)
    return np.column_stack([X, *[X[:, i] * X[:, j] for i, j in pairs]])


class Winsorizer(BaseEstimator, TransformerMixin):
    """Limit each column to the [q, 1 - q] quantiles of the training data."""

    def __init__(self, q=0.05):
        self.q = q

    def fit(self, X, y=None):
        X = np.asarray(X, dtype=float)
        self.low_, self.high_ = np.quantile(X, [self.q, 1 - self.q], axis=0)
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X):
        return np.clip(np.asarray(X, dtype=float), self.low_, self.high_)
