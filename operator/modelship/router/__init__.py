"""`modelship router`: one HTTP entry point in front of every ModelDeployment.

A request goes app → registry → forward (balance picks the endpoint, upstream sends it,
wheel keeps its deadlines) → back to the client.

- server.py: the composition root: builds the router from its settings, serves it.
- settings.py: `RouterSettings`, its one typed settings object (docs/configuration.md).
- app.py: the ASGI app: routes, API keys, body limits; each request on as one `Exchange`.
- forward.py: the `Exchange` (one per request) and the `Forwarder`: holds for a model at
  zero replicas, retries and relay.
- balance.py: the strategies that pick an endpoint (pure).
- registry.py: the targets, by every name a request may use, with their endpoints; the
  static file.
- discovery.py: the registry kept from ModelDeployments and EndpointSlices (watches).
- scrape.py: the engines' own load, from their metrics.
- load.py: each model's demand (requests open, held, arrived) and the long poll of
  `/modelship/load`, which the operator's autoscaler reads.
- upstream.py: the one pooled client to the engines, behind a small interface.
- wheel.py: every request's deadlines on one timer.
- metrics.py, errors.py: its Prometheus metrics; its answers in OpenAI's error shape.
"""
