"""The local API gateway that executes API Management policies (its own app factory).

Import what you need from its modules: app.gateway.app (create_gateway_app, serve),
app.gateway.config, app.gateway.policy, app.gateway.template.
"""
