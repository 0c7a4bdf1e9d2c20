"""A plain churn model for the tests that need one without the bundle's training (monitoring, reports)."""

from __future__ import annotations

import pandas as pd

NUM = ["tenure_months", "monthly_charges", "total_charges", "support_tickets", "age"]
CAT = ["contract_type", "payment_method", "region"]


def fit_logreg(train: pd.DataFrame):
    """Impute + scale the numeric features, one-hot the categories, logistic regression on `churned`."""
    from sklearn.compose import make_column_transformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    pre = make_column_transformer(
        (make_pipeline(SimpleImputer(), StandardScaler()), NUM),
        (OneHotEncoder(handle_unknown="ignore"), CAT),
    )
    return make_pipeline(pre, LogisticRegression(max_iter=500)).fit(train[NUM + CAT], train["churned"])
