"""Monitoring of deployed model versions: A/B tests between the versions behind a router."""
