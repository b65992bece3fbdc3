from airflow.sdk import DAG
from fleetflow.airflow import FleetflowRunOperator

with DAG("fleetflow_squares", schedule=None):
    FleetflowRunOperator(task_id="squares", flow="examples.squares:squares", parameters={"n": 10})
