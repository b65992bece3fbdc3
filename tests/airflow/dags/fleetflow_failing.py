"""A DAG whose flow run fails: the Airflow task must fail with the flow's own error."""

from airflow.sdk import DAG
from fleetflow.airflow import FleetflowRunOperator

with DAG("fleetflow_failing", schedule=None):
    FleetflowRunOperator(
        task_id="checked",
        flow="examples.squares:checked",
        parameters={"values": [1, 2, -3]},
        retries=0,
    )
