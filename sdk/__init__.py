"""fxbroker SDK: register a Python function once, run it many times on your endpoints."""
