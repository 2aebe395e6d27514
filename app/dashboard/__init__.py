"""The dashboard served by the API at /dashboard (see app.dashboard.site)."""
