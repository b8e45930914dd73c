"""The dashboard's page data, charts, templates and static files (routes: service/api/ui.py)."""
