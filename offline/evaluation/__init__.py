"""Router evaluation: the harness behind `escalon eval`, baselines, metrics (AIQ), replayed cascades, fitting
the routing model, folding a promoted student into an artefact (docs/routing.md)."""
