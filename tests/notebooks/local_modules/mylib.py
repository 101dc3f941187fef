"""Feature helpers shared by the team's notebooks."""

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin


def featurize(rows):
    """Rows of raw measurements -> a float matrix with the body-mass/blood-pressure ratio."""
    X = np.asarray(rows, dtype=float)
    ratio = X[:, 2] / (np.abs(X[:, 3]) + 0.05)
    return np.column_stack([X, ratio])


class RatioFeatures(BaseEstimator, TransformerMixin):
    """Append x[i] / (|x[j]| + eps) for each (i, j) pair."""

    def __init__(self, pairs=((4, 5),), eps=0.05):
        self.pairs = pairs
        self.eps = eps

    def fit(self, X, y=None):
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def transform(self, X):
        X = np.asarray(X, dtype=float)
        extra = [X[:, i] / (np.abs(X[:, j]) + self.eps) for i, j in self.pairs]
        return np.column_stack([X, *extra])
