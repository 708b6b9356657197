"""The application: the CLI, the demo, Airflow orchestration and the Spark operator, evaluation."""
