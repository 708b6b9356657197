"""MLflow pyfunc wrapper of a model bundle, logged as "models from code" (no pickled object).

``mlflow.pyfunc.load_model("models:/fleetwatch-<dataset>@champion").predict(frame)`` scores a
frame of feature rows (``entity_id``, ``ts`` and the feature view's columns) with the bundle.
"""

import mlflow
from mlflow.pyfunc import PythonModel


class BundleModel(PythonModel):
    """Scores feature rows with the per-entity models of one bundle."""

    def load_context(self, context):
        from models.bundle import ModelBundle

        self.bundle = ModelBundle.load(context.artifacts["bundle"])

    def predict(self, context, model_input, params=None):
        frames = [self.bundle.score(g.sort_values("ts")) for _, g in model_input.groupby("entity_id", sort=True)]
        import pandas as pd

        return pd.concat(frames, ignore_index=True) if frames else model_input.iloc[0:0]


mlflow.models.set_model(BundleModel())
