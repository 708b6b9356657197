"""MLflow pyfunc wrapper of a model bundle, logged as "models from code" (no pickled object).

``mlflow.pyfunc.load_model("models:/fleetwatch-<dataset>@champion").predict(frame)`` scores a
frame of feature rows (``entity_id``, ``ts`` and the feature view's columns) with the bundle.
"""

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class BundleModel(PythonModel):
    """Scores feature rows with the per-entity models of one bundle."""

    def load_context(self, context):
        from models.bundle import ModelBundle  # lazy: MLflow loads this file as code; the bundle's modules load with the model

        self.bundle = ModelBundle.load(context.artifacts["bundle"])

    def predict(self, context, model_input, params=None):
        frames = [self.bundle.score(g.sort_values("ts")) for _, g in model_input.groupby("entity_id", sort=True)]
        return pd.concat(frames, ignore_index=True) if frames else model_input.iloc[0:0]


mlflow.models.set_model(BundleModel())
