"""The stage model and DAG, as plain data shared by the supervisor and the workers."""
