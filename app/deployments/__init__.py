"""Deployments pages."""
