"""ipywidgets views shown inside notebooks: run progress (status and dashboards follow)."""
