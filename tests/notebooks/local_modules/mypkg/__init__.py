"""mypkg: the team's small feature-engineering package."""

from mypkg.features import Winsorizer, interaction_terms

__all__ = ["Winsorizer", "interaction_terms"]
__version__ = "0.3.1"
