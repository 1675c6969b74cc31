"""edgetune.fleet: federated personalization on Flower (the `fleet` extra).

A fleet of devices trains one bundle's head together without moving their samples:
each device (an edgetune profile) trains on its own cached features and sends only
parameter arrays and a few numbers; Flower's strategies average them.

Modules: params (what is exchanged: arrays in manifest order, class columns named by
the fleet's vocabulary), device (a round on one device, without Flower), client_app
(the Flower ClientApp), server_app (the Flower ServerApp), deploy (SuperLink,
SuperNodes and a run on Flower's Deployment Engine), simulate (virtual devices on
Flower's simulation engine). Imports flwr; the runtime never imports this package.
"""
