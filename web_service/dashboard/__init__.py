"""The live dashboard at ``/dashboard``: one page, signed in with an API token, that shows
a user's endpoints, tasks and functions and updates itself over server-sent events.

``sessions`` signs browsers in and checks CSRF, ``snapshot`` builds what the page shows,
``routes`` serves the page and its JSON; the page itself is ``static/`` (plain HTML,
JavaScript and CSS, the chart inline SVG).
"""
