"""The deploy card as a widget: its HTML (:func:`nbdeploy.widgets.deployment.card_html`)
and a button that opens the deployment's dashboard below it and closes it again."""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets


class DeploymentCard(widgets.VBox):
    """The card; ``text`` is what a front end without widgets shows instead."""

    def __init__(self, html_value: str, name: str, text: str = "") -> None:
        self.deployment_name = name
        self.text = text
        self.dashboard: Any = None
        self.card_html = widgets.HTML(value=html_value)
        self.dashboard_button = widgets.Button(
            description="dashboard",
            icon="line-chart",
            tooltip=f'nbdeploy.dashboard("{name}"): live figures, drift, stop / rollback',
            layout=widgets.Layout(width="auto"),
        )
        self.dashboard_button.on_click(lambda _: self.toggle_dashboard())
        self.output = widgets.Output()
        super().__init__(
            children=[self.card_html, widgets.HBox([self.dashboard_button]), self.output]
        )
        self.add_class("nbd-deployment-card")

    def toggle_dashboard(self) -> None:
        """Open the dashboard below the card, or close it (which stops its refreshing)."""
        from IPython.display import display

        from nbdeploy.widgets.dashboard import dashboard

        if self.dashboard is not None:
            self.dashboard.close()
            self.dashboard = None
            self.output.clear_output()
            self.dashboard_button.description = "dashboard"
            return
        self.dashboard = dashboard(self.deployment_name)
        self.dashboard_button.description = "hide dashboard"
        with self.output:
            display(self.dashboard)

    def close(self) -> None:
        if self.dashboard is not None:
            self.dashboard.close()
            self.dashboard = None
        super().close()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return with_text(super()._repr_mimebundle_(**kwargs), self.text)


def with_text(bundle: Any, text: str) -> Any:
    """A widget's display data with ``text`` as its plain-text form (what nbconvert, a
    console or a test reading text/plain shows) instead of the widget's repr."""
    if bundle is not None and text:
        bundle["text/plain"] = text
    return bundle
