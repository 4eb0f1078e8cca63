"""The demo's analytics report and the single customer view (HTML, Plotly, offline)."""
