"""The operator process: Kopf wiring, the reconcile loop and its work queue, resolution on
the Hub, reading the cluster, and the plan."""
